"""The per-sweep review: a sweep folder read as data (:mod:`.sweep`), batch-size scaling
(:mod:`.batch`), figures (:mod:`.figures`), the HTML page (:mod:`.html`), all of it written
into the folder (:mod:`.build`), and the sweep's W&B workspace (:mod:`.dashboard`)."""
