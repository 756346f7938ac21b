"""Admin tools that look at a whole site: ``hpcenv site check`` (:mod:`.site_check`)."""
