"""Job.checkpoint's arguments: it is registered by hand with the fast calling convention
(python/src/fastcall.rs), so its argument rules are tested here rather than trusted to PyO3."""

import inspect

import pytest

import ckpt


@pytest.fixture
def job(tmp_path):
    store = ckpt.open(f"sqlite://{tmp_path / 'args.db'}")
    job = store.job("j", always=True)
    yield store, job
    job.release()


def saved(store):
    info = store.status("j")
    return (info.cursor, info.items_processed, info.stage, info.state)


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        ((5,), {}, (5, 1, None, None)),
        ((5, 7), {}, (5, 7, None, None)),
        ((), {"cursor": 5, "items_processed": 7}, (5, 7, None, None)),
        ((5,), {"items_processed": 7, "stage": "load", "state": {"n": 1}}, (5, 7, "load", {"n": 1})),
        ((5, 7), {"state": [1], "stage": None}, (5, 7, None, [1])),
        ((None, None), {"stage": None, "state": None}, (None, 1, None, None)),
    ],
)
def test_positional_and_keyword_forms_save_the_same(job, args, kwargs, expected):
    store, job = job
    assert job.checkpoint(*args, **kwargs) is True
    assert saved(store) == expected


def test_keyword_names_built_at_run_time_are_matched_too(job):
    # Names in source code are interned (matched by pointer); these are not.
    store, job = job
    names = ["".join(["cur", "sor"]), "items_" + "processed", "st" + "age"]
    assert job.checkpoint(**dict(zip(names, [9, 4, "x"]))) is True
    assert saved(store) == (9, 4, "x", None)


def test_items_processed_defaults_to_the_previous_plus_one(job):
    store, job = job
    job.checkpoint("a", 10)
    job.checkpoint("b")
    job.checkpoint("c")
    assert saved(store)[:2] == ("c", 12)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((), {}, TypeError, "missing 1 required argument: 'cursor'"),
        ((1, 2, 3), {}, TypeError, "at most 2 positional arguments"),
        ((1,), {"foo": 2}, TypeError, "unexpected keyword argument 'foo'"),
        ((1,), {"cursor": 2}, TypeError, "multiple values for argument 'cursor'"),
        ((1, 2), {"items_processed": 3}, TypeError, "multiple values for argument 'items_processed'"),
        ((1,), {"stage": 3}, TypeError, "stage must be a str or None"),
        ((1,), {"items_processed": -1}, ckpt.InvalidInputError, "items_processed must be a whole number from 0 to"),
        ((1,), {"items_processed": 2**64}, ckpt.InvalidInputError, "items_processed must be a whole number from 0 to"),
        ((1,), {"items_processed": "7"}, TypeError, "'str' object cannot be interpreted as an integer"),
        ((1,), {"items_processed": 7.0}, TypeError, "'float' object cannot be interpreted as an integer"),
        (({1},), {}, ckpt.InvalidInputError, "not JSON"),
    ],
)
def test_bad_arguments_raise_and_save_nothing(job, args, kwargs, error, message):
    store, job = job
    job.checkpoint("good", 1)
    with pytest.raises(error, match=message):
        job.checkpoint(*args, **kwargs)
    assert saved(store)[:2] == ("good", 1)
    # The handle is still usable after a refused call.
    job.checkpoint("next", 2)
    assert saved(store)[:2] == ("next", 2)


def test_the_method_has_its_signature_and_docstring():
    sig = inspect.signature(ckpt.Job.checkpoint)
    assert list(sig.parameters) == ["self", "cursor", "items_processed", "stage", "state"]
    assert sig.parameters["stage"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "policy" in ckpt.Job.checkpoint.__doc__


def test_the_method_refuses_another_type_as_self():
    with pytest.raises(TypeError):
        ckpt.Job.checkpoint(object(), 1)
