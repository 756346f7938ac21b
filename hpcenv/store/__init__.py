"""The shared store on the cluster filesystem: where builds live (:mod:`.layout`), the locks that
order builders (:mod:`.locking`), the lab registry (:mod:`.registry`), an env's life after its
build (:mod:`.lifecycle`), crashed builders' leftovers (:mod:`.debris`), garbage collection
(:mod:`.gc`) and activation of a stored prefix (:mod:`.activation`)."""
