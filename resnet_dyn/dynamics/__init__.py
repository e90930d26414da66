"""Residual networks as dynamical systems: linearizations of units and stages and their spectra.

    from resnet_dyn.dynamics import analyze_units, with_intervention
    results = analyze_units(net.eval(), images, units=[0, 19], maps=("sum", "unit"))
    results[1]["sum"]["frac_one"], results[1]["sum"]["method"]

Building blocks: :mod:`.maps` (unit/stage maps of one image), :mod:`.window`
(receptive windows), :mod:`.jacobian` (dense and colored Jacobians), :mod:`.krylov`
(block Lanczos, SLQ), :mod:`.gridlu` (nested-dissection LU of conv Jacobians, for
shift-invert), :mod:`.inertia` (exact counts of singular values below thresholds:
fractions and histograms), :mod:`.spectrum` (singular values), :mod:`.stats`,
:mod:`.analyze`, :mod:`.interventions`.
"""

from resnet_dyn.dynamics.inertia import (
    exact_fractions,
    singular_value_counts,
    singular_value_histogram,
)
from resnet_dyn.dynamics.interventions import accuracy, intervention_grid, with_intervention
from resnet_dyn.dynamics.jacobian import Jacobian, colored_jacobian, dense_jacobian, jacobian
from resnet_dyn.dynamics.maps import (
    EvalModeError,
    UnitMap,
    check_eval,
    stage_map,
    unit_map,
    unit_states,
)
from resnet_dyn.dynamics.spectrum import (
    SingularTriplets,
    dense_singular_values,
    extreme_singular_values,
    singular_value_quadrature,
)
from resnet_dyn.dynamics.stats import quadrature_fractions, spectrum_stats, summarize
from resnet_dyn.dynamics.unit_spectra import (
    MapSpectrum,
    analyze_stages,
    analyze_units,
    map_spectrum,
    spectra_arrays,
)
from resnet_dyn.dynamics.window import NonLocalMap, Window, local_window

__all__ = [
    "EvalModeError",
    "Jacobian",
    "MapSpectrum",
    "NonLocalMap",
    "SingularTriplets",
    "UnitMap",
    "Window",
    "accuracy",
    "analyze_stages",
    "analyze_units",
    "check_eval",
    "colored_jacobian",
    "dense_jacobian",
    "dense_singular_values",
    "exact_fractions",
    "extreme_singular_values",
    "intervention_grid",
    "jacobian",
    "local_window",
    "map_spectrum",
    "quadrature_fractions",
    "singular_value_counts",
    "singular_value_histogram",
    "singular_value_quadrature",
    "spectra_arrays",
    "spectrum_stats",
    "stage_map",
    "summarize",
    "unit_map",
    "unit_states",
    "with_intervention",
]
