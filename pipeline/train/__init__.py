"""Training the retrieval model: AstroLoc's losses (:mod:`.losses`) and batch sampling (:mod:`.sampler`)."""
