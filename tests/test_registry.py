"""grpo.registry.registrar: the one decorator behind every name → implementation table."""

from grpo.loss import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from grpo.registry import registrar
from pipelines.stages.base import STAGE_KINDS


def test_registrar_stores_returns_and_names():
    table: dict = {}
    register = registrar(table)
    named = registrar(table, name_attr="kind")

    def fn():
        return 1

    assert register("a")(fn) is fn and table == {"a": fn}

    class Thing:
        pass

    assert named("b")(Thing) is Thing and Thing.kind == "b" and table["b"] is Thing
    register("a")(Thing)  # a name registered again is replaced (re-imported user modules)
    assert table["a"] is Thing


def test_the_tables_hold_what_the_modules_register():
    assert sorted(KL_ESTIMATORS) == ["k1", "k2", "k3"]
    assert sorted(AGGREGATIONS) == ["bnpo", "dapo", "dr_grpo", "grpo"]
    assert sorted(POLICY_LOSSES) == ["cispo", "clip", "gspo", "sapo"]
    assert all(cls.kind == kind for kind, cls in STAGE_KINDS.items()) and "grpo" in STAGE_KINDS
