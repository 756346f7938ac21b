"""Jobs: CUDA-aware partition routing (:mod:`.routing`), job scripts (:mod:`.templates`),
``hpcenv submit`` (:mod:`.submit`) and job control over submission records (:mod:`.control`)."""
