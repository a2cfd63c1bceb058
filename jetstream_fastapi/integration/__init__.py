"""The FastAPI integration: the lifespan and ``get_broker`` (:mod:`.lifespan`), consumer routers
(:mod:`.routing`), dependency injection into handlers (:mod:`.injection`) and health probes (:mod:`.health`)."""
