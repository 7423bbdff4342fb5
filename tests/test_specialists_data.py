"""Loaders for the specialists' real data (Planetoid graphs, fairness tables) and the tabular schema."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from composer.errors import BadRequestError
from composer.specialists.data import (DataNotFoundError, _PlanetoidUnpickler, load_adult,
                                       load_compas, load_german, load_planetoid)
from composer.specialists.schema import TabularSchema


@pytest.fixture(scope="module")
def cora():
    return load_planetoid("cora")


@pytest.fixture(scope="module")
def adult():
    return load_adult()


def test_cora_standard_split(cora):
    assert cora.x.shape == (2708, 1433) and cora.num_classes == 7
    assert (len(cora.train_idx), len(cora.val_idx), len(cora.test_idx)) == (140, 500, 1000)
    assert np.bincount(cora.y[cora.train_idx]).tolist() == [20] * 7
    assert np.all(np.diff(cora.test_idx) > 0)  # sorted test index
    assert not set(cora.test_idx) & set(cora.val_idx) and not set(cora.train_idx) & set(cora.val_idx)
    ei = cora.edge_index
    assert ei.shape[1] == 10556 and not np.any(ei[0] == ei[1])
    pairs = set(map(tuple, ei.T.tolist()))
    assert all((b, a) in pairs for a, b in list(pairs)[:500])  # undirected
    rows = np.asarray(cora.x.sum(1)).ravel()
    assert np.allclose(rows[rows > 0], 1.0, atol=1e-5)  # row-normalised features


def test_citeseer_isolated_test_nodes():
    g = load_planetoid("citeseer")
    assert g.x.shape == (3327, 3703) and g.num_classes == 6 and len(g.train_idx) == 120
    missing = np.flatnonzero(g.y < 0)
    assert len(missing) == 15  # ids absent from ind.citeseer.test.index: no features, no label
    assert np.asarray(g.x[missing].sum(1)).ravel().max() == 0
    assert not set(missing) & (set(g.train_idx) | set(g.val_idx) | set(g.test_idx))
    assert len(g.test_idx) == 1000 and (g.y[g.test_idx] >= 0).all()


def test_planetoid_pickles_cannot_load_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        import io

        _PlanetoidUnpickler(io.BytesIO(pickle.dumps(Evil())), encoding="latin1").load()


def test_missing_data_folder_names_the_setting(tmp_path):
    with pytest.raises(DataNotFoundError, match="COMPOSER_DATA"):
        load_planetoid("cora", root=tmp_path)
    with pytest.raises(DataNotFoundError, match="adult"):
        load_adult(root=tmp_path)


def test_adult_official_files(adult):
    assert len(adult.X_train) == 32561 and len(adult.X_test) == 16281
    assert "sex" not in adult.X_train.columns and "fnlwgt" not in adult.X_train.columns
    assert set(adult.s_train) == {"Female", "Male"}
    assert 0.23 < adult.y_train.mean() < 0.25 and 0.23 < adult.y_test.mean() < 0.25
    wc = next(f for f in adult.schema.features if f.name == "workclass")
    assert "?" in wc.categories and "Private" in wc.categories
    assert adult.schema.encode(adult.X_test).shape == (16281, adult.schema.n_columns)


def test_compas_propublica_filters_and_german():
    c = load_compas()
    assert len(c.y_train) + len(c.y_test) == 5278  # 6,172 after filters, two races kept
    assert set(c.s_train) == {"African-American", "Caucasian"} and "race" not in c.X_train.columns
    all_races = load_compas(races=())
    assert len(all_races.y_train) + len(all_races.y_test) == 6172
    gr = load_german()
    assert (len(gr.y_train), len(gr.y_test)) == (700, 300)
    assert set(gr.s_train) == {"female", "male"} and "status_sex" not in gr.X_train.columns
    assert abs(np.concatenate([gr.y_train, gr.y_test]).mean() - 0.7) < 1e-9


def test_schema_encodes_frames_and_records_the_same(adult):
    sc = adult.schema
    rows = adult.X_test.iloc[:5]
    records = rows.to_dict("records")
    assert np.allclose(sc.encode(rows), sc.encode_records(records))
    assert np.allclose(sc.encode_codes(sc.to_codes(rows)), sc.encode(rows))
    back = TabularSchema.from_dict(sc.to_dict())
    assert back == sc and np.allclose(back.encode(rows), sc.encode(rows))
    assert sum(b - a for _, a, b in sc.groups) == sc.n_columns == len(sc.columns)


@pytest.mark.parametrize("change, field", [
    (lambda r: r.pop("age"), "records[0].age: missing"),
    (lambda r: r.update(salary=1), "records[0].salary: unknown feature"),
    (lambda r: r.update(age="forty"), "records[0].age: expected a finite number"),
    (lambda r: r.update(age=True), "records[0].age: expected a finite number"),
    (lambda r: r.update(age=float("nan")), "records[0].age: expected a finite number"),
    (lambda r: r.update(workclass=3), "records[0].workclass: expected a category string"),
    (lambda r: r.update(workclass="Astronaut"), "records[0].workclass: unseen category 'Astronaut'"),
])
def test_schema_bad_records_name_the_field(adult, change, field):
    record = adult.X_test.iloc[0].to_dict()
    record = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}
    change(record)
    with pytest.raises(BadRequestError, match=field.replace("[", r"\[").replace("]", r"\]")):
        adult.schema.encode_records([record])


def test_schema_frame_errors(adult):
    df = adult.X_test.iloc[:3].copy()
    df.loc[df.index[1], "occupation"] = "Wizard"
    with pytest.raises(BadRequestError, match=r"occupation: unseen category 'Wizard' at row 1"):
        adult.schema.encode(df)
    with pytest.raises(BadRequestError, match="missing feature column"):
        adult.schema.encode(adult.X_test.iloc[:3].drop(columns=["age"]))
