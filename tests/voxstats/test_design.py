"""voxstats.design: validation of designs and contrasts, one clear error per bad input."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from voxstats.design import make_contrasts, make_design


@pytest.fixture
def frame(rng):
    n = 12
    return pd.DataFrame({"intercept": np.ones(n), "group": np.repeat([0.0, 1.0], n // 2),
                         "age": rng.normal(40, 10, n), "sex": rng.integers(0, 2, n).astype(float)})


def test_dataframe_names_kept_and_matrix_frozen(frame):
    design = make_design(frame)
    assert design.names == ("intercept", "group", "age", "sex")
    np.testing.assert_array_equal(design.matrix, frame.to_numpy())
    assert design.rank == 4 and design.df == 8
    assert design.n_subjects == 12 and design.n_regressors == 4
    with pytest.raises(ValueError):
        design.matrix[0, 0] = 5.0  # read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        design.rank = 3
    assert make_design(design) is design  # idempotent


def test_array_design_and_1d_column():
    design = make_design(np.ones((5, 2)) + np.arange(10).reshape(5, 2) ** 2)
    assert design.names == ("x0", "x1")
    one = make_design(np.arange(4.0))
    assert one.matrix.shape == (4, 1)


def test_demean_like_randomise(frame):
    design = make_design(frame, demean=True)
    # randomise -D demeans every EV: the intercept becomes 0 (an implicit intercept is fitted)
    np.testing.assert_array_equal(design.matrix[:, 0], 0.0)
    np.testing.assert_allclose(design.matrix.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(design.matrix[:, 2], frame["age"] - frame["age"].mean())
    assert design.demeaned
    assert design.rank == frame.shape[1] - 1 and design.df == len(frame) - design.rank - 1
    model, weights = design.model(np.array([[0.0, 0, 1, 0]]))
    np.testing.assert_array_equal(model[:, -1], 1.0)
    np.testing.assert_array_equal(weights, [[0, 0, 1, 0, 0]])
    # the input is not modified
    assert frame["age"].mean() != pytest.approx(0.0)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: m.__setitem__((3, 2), np.nan), r"design: NaN or infinite value at row 3, column 'x2'"),
    (lambda m: m.__setitem__((0, 1), np.inf), r"design: NaN or infinite value at row 0, column 'x1'"),
])
def test_nonfinite_design(rng, mutate, match):
    m = rng.standard_normal((10, 3))
    mutate(m)
    with pytest.raises(ValueError, match=match):
        make_design(m)


def test_nonfinite_design_names_dataframe_column(frame):
    frame.loc[2, "age"] = np.nan
    with pytest.raises(ValueError, match=r"row 2, column 'age'"):
        make_design(frame)


def test_too_few_subjects(rng):
    with pytest.raises(ValueError, match=r"design: 4 subjects is too few for 4 regressors; "
                                         r"need at least 5 \(n_regressors \+ 1\)"):
        make_design(rng.standard_normal((4, 4)))
    make_design(rng.standard_normal((5, 4)))  # n = p + 1 is enough


def test_rank_deficient_design(frame):
    frame["group2"] = 1.0 - frame["group"]  # intercept = group + group2
    with pytest.raises(ValueError, match=r"design: rank-deficient design \(rank 4 < 5 regressors\); "
                                         r"linearly dependent columns: \['intercept', 'group', 'group2'\]"):
        make_design(frame)
    design = make_design(frame, allow_rank_deficient=True)
    assert design.rank == 4 and design.df == 8


def test_other_bad_designs():
    with pytest.raises(ValueError, match=r"design: columns \['site'\] are not numeric"):
        make_design(pd.DataFrame({"a": [1.0, 2.0, 3.0], "site": ["x", "y", "z"]}))
    with pytest.raises(ValueError, match=r"design: expected a 2D \(n_subjects, n_regressors\) matrix, "
                                         r"got shape \(2, 2, 2\)"):
        make_design(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"design: expected a numeric \(n_subjects, n_regressors\) array"):
        make_design([["a", "b"], ["c", "d"]])
    with pytest.raises(ValueError, match=r"design: expected at least one regressor, got none"):
        make_design(np.ones((4, 0)))


def test_contrast_forms(frame):
    design = make_design(frame)
    by_vector = make_contrasts([0, 1, 0, 0], design)
    assert by_vector[0].name == "tstat1" and by_vector[0].kind == "t"
    np.testing.assert_array_equal(by_vector[0].weights, [[0, 1, 0, 0]])
    by_matrix = make_contrasts([[0, 1, 0, 0], [0, -1, 0, 0]], design)
    assert [c.name for c in by_matrix] == ["tstat1", "tstat2"]
    by_name = make_contrasts({"patients>controls": [0, 1, 0, 0], "age": {"age": 1.0}}, design)
    assert [c.name for c in by_name] == ["patients>controls", "age"]
    np.testing.assert_array_equal(by_name[1].weights, [[0, 0, 1, 0]])
    # a dict whose keys are all column names is one contrast given by weights
    by_columns = make_contrasts({"group": 1, "age": -1}, design)
    np.testing.assert_array_equal(by_columns[0].weights, [[0, 1, -1, 0]])
    with_f = make_contrasts([0, 1, 0, 0], design, f_contrasts={"any": np.eye(4)[1:3]})
    assert [c.kind for c in with_f] == ["t", "F"] and with_f[1].rank == 2
    only_f = make_contrasts(None, design, f_contrasts=[np.eye(4)[2:4]])
    assert only_f[0].name == "fstat1"


@pytest.mark.parametrize("contrasts,f_contrasts,match", [
    ([0, 1, 0], None, r"contrast 'tstat1': has 3 weights but the design has 4 regressors "
                      r"\(\['intercept', 'group', 'age', 'sex'\]\)"),
    ([0, 0, 0, 0], None, r"contrast 'tstat1': all weights are zero"),
    ([0, np.nan, 0, 0], None, r"contrast 'tstat1': NaN or infinite weight"),
    ({"c": [[0, 1, 0, 0], [0, 0, 1, 0]]}, None, r"contrast 'c': a t contrast is one row of weights, got 2 rows"),
    ({"c": {"weight": 1}}, None, r"contrast 'c': unknown regressor names \['weight'\]"),
    (None, {"f": np.eye(5)}, r"F contrast 'f': has 5 weights but the design has 4 regressors"),
    (None, None, r"contrasts: expected at least one t or F contrast, got none"),
    ({"a": [0, 1, 0, 0]}, {"a": np.eye(4)[1:3]}, r"contrasts: duplicate names \['a', 'a'\]"),
    ("abc", None, r"contrasts: no such file 'abc' \(a string names a file: FSL design.con or CSV/TSV\)"),
    (None, "x.fts", r"f_contrasts: no such file 'x.fts' \(a string names a file: FSL design.fts"),
    ([[0, 1]], None, r"contrasts: expected numeric weights, got|contrast 'tstat1': has 2 weights"),
])
def test_bad_contrasts(frame, contrasts, f_contrasts, match):
    design = make_design(frame)
    with pytest.raises(ValueError, match=match):
        make_contrasts(contrasts, design, f_contrasts=f_contrasts)


def test_non_estimable_contrast(frame):
    frame["group2"] = 1.0 - frame["group"]
    design = make_design(frame, allow_rank_deficient=True)
    # group alone cannot be separated from the intercept, but group - group2 can
    with pytest.raises(ValueError, match=r"contrast 'tstat1': not estimable with this design"):
        make_contrasts([0, 1, 0, 0, 0], design)
    estimable = make_contrasts([0, 1, 0, 0, -1], design)
    assert estimable[0].kind == "t"
    with pytest.raises(ValueError, match=r"F contrast 'f': not estimable"):
        make_contrasts(None, design, f_contrasts={"f": [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]})


def test_dict_of_named_vectors_whose_names_are_columns_is_several_contrasts():
    import pandas as pd

    design = make_design(pd.DataFrame({"a": [1.0] * 6, "b": [0, 1, 0, 1, 0, 1.0], "c": [1, 2, 3, 5, 4, 6.0]}))
    named = make_contrasts({"b": [0, 1, 0], "c": [0, 0, 1]}, design)
    assert [c.name for c in named] == ["b", "c"]
    np.testing.assert_array_equal(named[1].weights, [[0, 0, 1]])
    single = make_contrasts({"b": 1, "c": -1}, design)
    assert len(single) == 1
    np.testing.assert_array_equal(single[0].weights, [[0, 1, -1]])
