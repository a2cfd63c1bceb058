"""The broker's front: everything a caller sees that is not wire protocol, written once for every backend.

:mod:`.broker` (``BaseBroker``), its options and their defaults (:mod:`.options`), the fate of a handled
message (:mod:`.handling`), what is published (:mod:`.payloads`), subjects and queue names
(:mod:`.subjects`) and the dead-letter format (:mod:`.dead_letters`). Imports nothing from ``nats``.
"""
