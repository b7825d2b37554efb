"""The model registry: an append-only, hash-chained ledger of what happened to runs (:mod:`.ledger`), the
promotion gate (:mod:`.promote`), run comparisons (:mod:`.diff`), the feedback → DPO → gate → promote loop
(:mod:`.improve`) and the ``quark runs`` / ``quark improve`` commands (:mod:`.cli_main`)."""
