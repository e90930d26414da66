"""The per-sweep report: a sweep folder read as data (:mod:`.sweep`), batch-size scaling
(:mod:`.batch`), figures (:mod:`.figures`), the HTML page (:mod:`.html`), and all of it
written into the folder (:mod:`.build`)."""
