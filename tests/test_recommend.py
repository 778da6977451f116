"""Recommendation from profiles: liked and disliked items with weights, a text, exclusions, the
batch form, and the strict Python API; over a real catalog of Flickr photos and near copies
of some of them (a slight crop and brightening, made with Pillow).

The models are tiny and random, so the tests check geometry, not semantics: a photo's near copy
is its nearest neighbour (checked first, since every other test leans on it).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from pydantic import ValidationError

from mmsearch import BadInput, Engine, NotFound, Query
from mmsearch.search.request import Profile
from tests.conftest import flickr_images

N_PHOTOS = 20
N_COPIES = 10


def near_copy(src: Path, dest: Path) -> None:
    """2% cropped off each side and 5% brighter: the same photo to a person, other bytes to a model."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    im = im.crop((w // 50, h // 50, w - w // 50, h - h // 50))
    ImageEnhance.Brightness(im).enhance(1.05).save(dest, quality=92)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clip_spec: str) -> Iterator[dict[str, Any]]:
    from tests.conftest import CONFIG_DIR
    from mmsearch.settings import Settings

    tmp = tmp_path_factory.mktemp("rec")
    root = tmp / "media"
    (root / "photos").mkdir(parents=True)
    (root / "copies").mkdir()
    sources = flickr_images(N_PHOTOS)
    for src in sources:
        shutil.copy2(src, root / "photos" / src.name)
    for src in sources[:N_COPIES]:
        near_copy(src, root / "copies" / src.name)
    (root / "notes").mkdir()
    (root / "notes" / "dogs.txt").write_text("Two dogs play fetch on a sandy beach at sunset.")
    (root / "notes" / "city.txt").write_text("A busy city street with yellow taxis.")
    settings = Settings(catalog=tmp / "catalog", model=clip_spec, model_config_dirs=[CONFIG_DIR], audio=False,
                        batch_size=16, decode_workers=2, device="cpu")
    engine = Engine.open(settings)
    assert engine.index([root]).failed == 0
    photo = {src.name: engine.lookup(root / "photos" / src.name)[0] for src in sources}
    copy = {src.name: engine.lookup(root / "copies" / src.name)[0] for src in sources[:N_COPIES]}
    names = [src.name for src in sources]
    yield {"engine": engine, "root": root, "settings": settings, "names": names,
           "photo": [photo[n] for n in names], "copy": [copy[n] for n in names[:N_COPIES]],
           "note": engine.lookup(root / "notes" / "dogs.txt")[0]}
    engine.close()


def ids(response: Any) -> list[int]:
    return [h.id for h in response.results]


def test_a_photo_s_near_copy_is_its_nearest_neighbour(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    for p, c in zip(world["photo"], world["copy"]):
        assert ids(engine.similar([p], k=1)) == [c]


# -- profiles -----------------------------------------------------------------------------------

def test_a_liked_item_ranks_its_near_copy_first_and_never_itself(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    photo, copy = world["photo"], world["copy"]
    for i in range(4):
        got = ids(engine.recommend(like=[photo[i]], dislike=[photo[i + 5]], k=5))
        assert got[0] == copy[i]
        assert photo[i] not in got and photo[i + 5] not in got
        assert all(engine.item(h).modality == "image" for h in got)  # the liked items' own modality


def test_disliked_items_near_copies_sink(world: dict[str, Any]) -> None:
    """A dislike pushes its own near copy down, further as it weighs more. In this random model
    unrelated photos are already at cosine 0.95, so a default-weight dislike moves its copy only
    a few places; a dislike weighing as much as the like puts it in the bottom half."""
    engine: Engine = world["engine"]
    photo, copy = world["photo"], world["copy"]
    moved = 0
    for liked, disliked in ((0, 2), (1, 6), (4, 5), (2, 7), (3, 8), (5, 9)):
        before = ids(engine.recommend(like=[photo[liked]], k=50))
        mild = ids(engine.recommend(like=[photo[liked]], dislike=[photo[disliked]], k=50))
        strong = ids(engine.recommend(like=[photo[liked]], dislike=[photo[disliked]], dislike_weight=1.0, k=50))
        assert mild[0] == copy[liked]
        assert before.index(copy[disliked]) <= mild.index(copy[disliked]) <= strong.index(copy[disliked])
        assert strong.index(copy[disliked]) >= len(strong) // 2
        moved += mild.index(copy[disliked]) - before.index(copy[disliked])
    assert moved > 0


def test_best_scoring_costs_a_disliked_items_copy_the_most(world: dict[str, Any]) -> None:
    """With ``scoring="best"`` a dislike subtracts dislike_weight times each candidate's cosine
    to it: its near copy loses more than any other candidate."""
    engine: Engine = world["engine"]
    photo, copy = world["photo"], world["copy"]
    for liked, disliked in ((0, 2), (1, 6), (7, 0)):
        before = {h.id: h.score for h in engine.recommend(like=[photo[liked]], k=50, scoring="best").results}
        after = {h.id: h.score for h in engine.recommend(like=[photo[liked]], dislike=[photo[disliked]], k=50,
                                                         scoring="best").results}
        loss = {i: before[i] - after[i] for i in after}
        assert max(loss, key=loss.__getitem__) == copy[disliked]
        assert loss[copy[disliked]] == pytest.approx(0.25 * engine.vectors([copy[disliked]])["clip.image"].vectors[0]
                                                     @ engine.vectors([photo[disliked]])["clip.image"].vectors[0],
                                                     abs=2e-3)


def test_weights_pick_which_liked_item_leads(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    photo, copy = world["photo"], world["copy"]
    for a, b in ((0, 1), (2, 3), (0, 4)):
        for heavy, light in ((a, b), (b, a)):  # swapping the weights swaps the copies' order
            for scoring in ("rocchio", "best"):
                got = ids(engine.recommend(like={photo[heavy]: 4.0, photo[light]: 1.0}, k=50, scoring=scoring))
                assert got.index(copy[heavy]) < got.index(copy[light])
    # a heavier dislike pushes its copy at least as far down
    like = [photo[0]]
    light_rank = ids(engine.recommend(like=like, dislike={photo[2]: 0.2}, k=30)).index(copy[2])
    heavy_rank = ids(engine.recommend(like=like, dislike={photo[2]: 3.0}, k=30)).index(copy[2])
    assert heavy_rank >= light_rank


def test_best_positive_keeps_every_taste_where_the_mean_blurs_them(world: dict[str, Any]) -> None:
    """Why ``scoring="best"`` exists: four liked photos are four tastes. Their mean lies near none
    of them, so Rocchio's top four miss some of their near copies; scoring each candidate by its
    best liked item returns all four copies first."""
    engine: Engine = world["engine"]
    photo, copy = world["photo"], world["copy"]
    liked = [0, 1, 2, 4]
    wanted = {copy[i] for i in liked}
    best = ids(engine.recommend(like=[photo[i] for i in liked], k=4, scoring="best"))
    mean = ids(engine.recommend(like=[photo[i] for i in liked], k=4))
    assert set(best) == wanted
    assert len(set(mean) & wanted) < len(wanted)
    # with a dislike too
    got = ids(engine.recommend(like=[photo[0], photo[1]], dislike=[photo[3]], k=2, scoring="best"))
    assert set(got) == {copy[0], copy[1]}


def test_a_text_steers_the_profile(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    photo = world["photo"]
    plain = engine.recommend(like=[photo[0]], k=10)
    steered = engine.recommend(like=[photo[0]], text="a dog at night", text_weight=2.0, k=10)
    assert [round(h.score, 4) for h in plain.results] != [round(h.score, 4) for h in steered.results]
    # a text alone is a search
    alone = engine.recommend(text="a dog at night", to="image", k=10)
    assert ids(alone) == ids(engine.search(Query(text="a dog at night", to="image", k=10)))


def test_exclude_leaves_out_what_was_seen(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    photo, copy = world["photo"], world["copy"]
    seen = [copy[0], photo[7], photo[8]]
    got = ids(engine.recommend(like=[photo[0]], exclude_ids=seen, k=N_PHOTOS))
    assert not set(got) & set(seen) and photo[0] not in got
    assert len(got) == N_PHOTOS  # the page is still full: excluded items are replaced, not dropped
    # with the other filters of a search
    under = ids(engine.recommend(like=[photo[0]], path="copies", k=50))
    assert set(under) == set(copy) - {copy[0]} | {copy[0]} and len(under) == N_COPIES
    assert ids(engine.recommend(like=[photo[0]], k=3, offset=1)) == ids(engine.recommend(like=[photo[0]], k=4))[1:]


def test_similar_is_a_profile_of_liked_items(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    photo = world["photo"]
    assert ids(engine.similar([photo[0], photo[3]], k=8)) == ids(engine.recommend(like=[photo[0], photo[3]], k=8))
    assert engine.item(ids(engine.similar([world["note"]], k=1))[0]).modality == "text"  # the item's own modality


# -- batch --------------------------------------------------------------------------------------

def _profiles(world: dict[str, Any]) -> list[dict[str, Any]]:
    photo, copy = world["photo"], world["copy"]
    return [
        {"like": [photo[0]]},
        {"like": [photo[1], photo[2]], "dislike": [photo[5]]},
        {"like": {photo[3]: 2.0, photo[4]: 0.5}, "dislike": {photo[6]: 1.5}, "k": 5},
        {"like": [photo[0], photo[9]], "scoring": "best", "k": 7},
        {"like": [photo[2]], "exclude_ids": [copy[2], photo[11]], "offset": 2, "k": 4},
        {"like": [photo[5]], "text": "a red car", "k": 6},
        {"like": [photo[6]], "path": "copies", "k": 3},
        {"like": [photo[7]], "min_score": 0.99},
        {"like": [photo[8], photo[12]], "dislike": [photo[13], photo[14]], "scoring": "best", "diversity": 0.3},
        {"like": [world["note"]], "to": "image"},
        {"like": [photo[1]], "to": "all", "k": 12},
    ]


def test_a_batch_answers_what_a_loop_of_single_queries_answers(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    profiles = _profiles(world)
    batch = engine.recommend_batch(profiles)
    loop = [engine.recommend(**p) for p in profiles]
    assert len(batch) == len(loop)
    for got, want in zip(batch, loop):
        assert [(h.id, h.score, h.calibrated, h.collection) for h in got.results] == \
               [(h.id, h.score, h.calibrated, h.collection) for h in want.results]
        assert got.results  # every profile found something
    assert [ids(r) for r in engine.recommend_batch([Profile(**p) for p in profiles])] == [ids(r) for r in batch]
    assert engine.recommend_batch([]) == []


@pytest.mark.parametrize("mode", ["exact", "selector", "broad"])
def test_metadata_filters_and_dedup_apply_to_profiles_batched_or_not(world: dict[str, Any], mode: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata filters are Filters fields: a profile takes them, and a batch answers what a
    loop answers whether the filter's selection is scored exactly, searched through an id
    selector, or (broad) checked on the shared search's candidates."""
    from mmsearch.search import runner as runner_module

    engine: Engine = world["engine"]
    photo, copy = world["photo"], world["copy"]
    if mode != "exact":
        monkeypatch.setattr(engine.runner._subsets, "exact_max", 0)
        monkeypatch.setattr(runner_module, "EXACT_SUBSET_MAX", 0)
    if mode == "broad":
        monkeypatch.setattr(runner_module, "BROAD_SHARE", 0.0)
    monkeypatch.setattr(engine.runner._subsets, "_entries", type(engine.runner._subsets._entries)())
    sizes = sorted(h.size for h in engine.recommend(like=[photo[0]], k=100).results)
    median = sizes[len(sizes) // 2]
    profiles: list[dict[str, Any]] = [
        {"like": [photo[0]], "ext": ["txt"], "to": "all"},
        {"like": [photo[1]], "min_size": median, "k": 5},
        {"like": [photo[2]], "path": "copies", "ext": ["jpg"], "k": 3},
        {"like": [photo[3]], "date_from": "1970-01-02", "dedup": 0.999},
        {"like": [photo[4]]},
    ]
    batch = engine.recommend_batch(profiles)
    loop = [engine.recommend(**p) for p in profiles]
    for got, want in zip(batch, loop):
        assert [(h.id, h.score) for h in got.results] == [(h.id, h.score) for h in want.results], mode
    assert batch[0].results and all(h.path.endswith(".txt") for h in batch[0].results)
    assert batch[1].results and all(h.size >= median for h in batch[1].results)
    assert batch[2].results and all("/copies/" in h.path for h in batch[2].results)
    assert batch[2].results[0].id == copy[2]  # its own near copy
    assert ids(batch[3])[0] == copy[3]  # dedup keeps the best of near copies
    assert ids(batch[4])[0] == copy[4]


def test_a_batch_reports_a_bad_profile_in_its_place(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    photo = world["photo"]
    profiles: list[dict[str, Any]] = [{"like": [photo[0]]}, {"like": [99_999]}, {"like": [photo[1]], "tpo": "image"},
                                      {"like": [photo[1]], "dislike": [photo[1]]}, {"like": [photo[2]]}]
    answers = engine.recommend_batch(profiles, errors="return")
    assert isinstance(answers[1], NotFound) and "99999" in str(answers[1])
    assert isinstance(answers[2], BadInput) and "tpo" in str(answers[2])
    assert isinstance(answers[3], BadInput) and "both liked and disliked" in str(answers[3])
    assert ids(answers[0]) == ids(engine.recommend(like=[photo[0]]))
    assert ids(answers[4]) == ids(engine.recommend(like=[photo[2]]))
    with pytest.raises(NotFound):
        engine.recommend_batch(profiles)


# -- a strict API -------------------------------------------------------------------------------

def test_unknown_fields_and_filters_are_refused(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    photo = world["photo"][0]
    with pytest.raises(ValidationError, match="tpo"):
        Query(text="dog", tpo="image")  # type: ignore[call-arg]
    with pytest.raises(BadInput, match="min_szie"):
        engine.similar([photo], min_szie=0.99)
    with pytest.raises(ValueError, match="min_szie"):  # BadInput is a ValueError, as Python callers expect
        engine.recommend(like=[photo], min_szie=0.99)
    with pytest.raises(BadInput, match="scoring"):
        engine.recommend(like=[photo], scoring="worst")  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="liked item or a text"):
        engine.recommend(dislike=[photo])
    with pytest.raises(BadInput, match="k"):
        engine.similar([photo], k=0)
    with pytest.raises(NotFound):
        engine.recommend(like=[photo, 99_999])
    with pytest.raises(BadInput, match="texts"):
        engine.embed(text=["a", "b"])  # type: ignore[call-overload]
    with pytest.raises(BadInput, match="list of strings"):
        engine.embed(texts="ab")
    with pytest.raises(BadInput, match="exactly one"):
        engine.embed(text="a", texts=["b"])  # type: ignore[call-overload]
    with pytest.raises(ValidationError, match="finite"):
        Query(item_ids=[photo], item_weights={photo: float("nan")})


def test_python_and_http_take_the_same_filters() -> None:
    from mmsearch.api import schemas
    from mmsearch.search import request

    assert set(request.Filters.model_fields) == set(schemas.Filters.model_fields)
    assert set(request.Profile.model_fields) == set(schemas.RecommendRequest.model_fields)


def test_embed_many_texts_matches_one_at_a_time(world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    texts = ["a dog", "a red car", "two children at the beach"]
    many = engine.embed(texts=texts)
    assert many.array().shape == (3, 32) and many.space == "clip"
    for text, row in zip(texts, many.array()):
        assert np.allclose(row, engine.embed(text=text).vector, atol=1e-5)
    assert engine.embed(texts=[]).vectors == []


# -- HTTP ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(world: dict[str, Any]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from mmsearch.api.app import create_app

    with TestClient(create_app(world["engine"])) as c:
        yield c


def test_http_recommend_matches_python(world: dict[str, Any], client: Any) -> None:
    engine: Engine = world["engine"]
    photo, copy = world["photo"], world["copy"]
    r = client.post("/recommend", json={"like": [photo[0]], "dislike": [photo[5]], "k": 5})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [h["id"] for h in page["results"]] == ids(engine.recommend(like=[photo[0]], dislike=[photo[5]], k=5))
    assert page["results"][0]["id"] == copy[0] and page["next_offset"] == 5 and "Server-Timing" in r.headers
    weighted = {"like": {str(photo[0]): 4, str(photo[1]): 1}, "dislike": {str(photo[2]): 0.5}, "scoring": "best",
                "exclude_ids": [copy[0]], "text": "a dog", "k": 6, "offset": 1}
    got = client.post("/recommend", json=weighted).json()
    want = engine.recommend(like={photo[0]: 4, photo[1]: 1}, dislike={photo[2]: 0.5}, scoring="best",
                            exclude_ids=[copy[0]], text="a dog", k=6, offset=1)
    assert [h["id"] for h in got["results"]] == ids(want)


def test_http_recommend_batch_and_similar_batch(world: dict[str, Any], client: Any) -> None:
    engine: Engine = world["engine"]
    photo = world["photo"]
    profiles = [{"like": [photo[0]], "k": 3}, {"like": [99_999]}, {"like": [photo[1]], "dislike": [photo[2]]}]
    r = client.post("/recommend/batch", json={"profiles": profiles})
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert [h["id"] for h in out[0]["results"]] == ids(engine.recommend(like=[photo[0]], k=3))
    assert out[1] == {"results": [], "error": "no item 99999"}
    assert [h["id"] for h in out[2]["results"]] == ids(engine.recommend(like=[photo[1]], dislike=[photo[2]]))
    r = client.post("/similar/batch", json={"item_ids": [photo[3], 99_999, world["note"]], "k": 4})
    entries = r.json()["results"]
    assert [e["item_id"] for e in entries] == [photo[3], 99_999, world["note"]]
    for e in (entries[0], entries[2]):
        single = client.post("/similar", json={"item_ids": [e["item_id"]], "k": 4}).json()
        assert e["results"] == single["results"] and e["error"] is None
    assert entries[1]["error"] == "no item 99999"


def test_http_item_vector_and_embed_texts(world: dict[str, Any], client: Any) -> None:
    engine: Engine = world["engine"]
    photo = world["photo"][0]
    r = client.get(f"/items/{photo}/vector")
    assert r.status_code == 200
    body = r.json()
    stored = engine.vectors([photo])["clip.image"]
    assert body["item_id"] == photo and len(body["vectors"]) == 1
    assert body["vectors"][0]["collection"] == "clip.image" and body["vectors"][0]["start"] is None
    assert body["vectors"][0]["embedding_id"] == int(stored.ids[0])
    assert np.allclose(body["vectors"][0]["vector"], stored.vectors[0])
    r = client.post("/embed", json={"texts": ["a dog", "a cat"]})
    assert r.status_code == 200, r.text
    many = r.json()
    assert many["dim"] == 32 and len(many["vectors"]) == 2 and many["space"] == "clip"
    assert np.allclose(many["vectors"][1], engine.embed(text="a cat").vector, atol=1e-5)
    assert client.post("/embed", json={"text": "a dog"}).json()["vector"] == \
        pytest.approx(many["vectors"][0], abs=1e-5)


@pytest.mark.parametrize(("method", "url", "body", "status"), [
    ("post", "/recommend", {"like": [99_999]}, 404),
    ("post", "/recommend", {"like": [1], "tpo": "image"}, 422),
    ("post", "/recommend", {"like": [0]}, 422),
    ("post", "/recommend", {"like": {"1": "heavy"}}, 422),
    ("post", "/recommend", '{"like": {"1": 1e999}}', 422),  # JSON's way to say infinity
    ("post", "/recommend", {"like": [1], "scoring": "worst"}, 422),
    ("post", "/recommend", {"like": list(range(1, 200))}, 422),
    ("post", "/recommend", {"like": [1], "k": 0}, 422),
    ("post", "/recommend", {"dislike": [1]}, 400),
    ("post", "/recommend", {"like": [1], "dislike": [1]}, 400),
    ("post", "/recommend", [1, 2], 422),
    ("post", "/similar", '{"item_ids": [1e999]}', 422),
    ("post", "/recommend/batch", {"profiles": []}, 422),
    ("post", "/recommend/batch", {"profiles": [{"like": [1]}] * 1001}, 422),
    ("post", "/recommend/batch", {"profiles": [{"like": [1], "min_szie": 1}]}, 422),
    ("post", "/recommend/batch", {"profile": [{"like": [1]}]}, 422),
    ("get", "/items/99999/vector", None, 404),
    ("get", "/items/0/vector", None, 422),
    ("post", "/embed", {"texts": []}, 422),
    ("post", "/embed", {"texts": ["a"] * 257}, 422),
    ("post", "/embed", {"text": "a", "texts": ["b"]}, 422),
    ("post", "/embed", {"texts": "ab"}, 422),
    ("post", "/embed", {"texts": [1, 2]}, 422),
    ("post", "/embed", {"texts": ["a"], "space": "clap"}, 400),  # audio is off here
])
def test_http_bad_input_is_a_4xx(client: Any, method: str, url: str, body: Any, status: int) -> None:
    if isinstance(body, str):
        r = client.post(url, content=body, headers={"content-type": "application/json"})
    else:
        r = getattr(client, method)(url, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert "detail" in r.json()


def test_rescoring_many_queries_at_once_is_rescoring_each(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from mmsearch.search import rerank
    from mmsearch.search.scoring import build

    engine: Engine = world["engine"]
    store = engine.indexes.store("clip.image", 32)
    ids = store.ids()
    rng = np.random.default_rng(0)
    picks = [rng.choice(ids, size=n) for n in (0, 5, 1, 17, 30, 0, 12)]  # empty, duplicated, padded below
    picks[2] = np.array([-1, ids[0], -1])
    picks.append(np.array([10**9, ids[3]]))  # an id the store does not hold
    vecs = store.get(ids[:3])
    queries: list[Any] = [vecs[0], build("best", None, [(vecs[1], 1.0), (vecs[2], 2.0)], [(vecs[0], 1.0)], [], 0.25)]
    queries = [queries[i % 2] for i in range(len(picks))]
    monkeypatch.setattr(rerank, "PARALLEL_MIN", 2)  # the threaded path, on a small batch
    together = rerank.exact_rescore_many(queries, picks, store, threads=3)
    assert [len(x[0]) for x in rerank.exact_rescore_many(queries, picks, store)] == [len(x[0]) for x in together]
    for q, c, (got_ids, got_scores) in zip(queries, picks, together):
        want_ids, want_scores = rerank.exact_rescore(q, c, store)
        assert got_ids.tolist() == want_ids.tolist() and np.array_equal(got_scores, want_scores)  # the same bits
        assert set(got_ids.tolist()) == set(c.tolist()) & set(ids.tolist())
        rows = store.get(got_ids)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        brute = q.score(rows) if hasattr(q, "score") else rows @ q
        assert np.allclose(got_scores, brute, atol=1e-6) and (np.diff(got_scores) <= 0).all()


def test_a_batch_reads_the_owners_of_its_pages_in_one_sql_read(world: dict[str, Any],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Unfiltered profiles map their best ids to items from one shared read: a profile whose first
    slice of ids reached past what the batch read would cost a SQL round trip of its own."""
    engine: Engine = world["engine"]
    photo = world["photo"]
    profiles: list[dict[str, Any]] = [{"like": [photo[0]], "dislike": [photo[5]]}, {"like": [photo[1]], "k": 3},
                                      {"like": [photo[2], photo[3]], "offset": 2, "k": 4, "exclude_ids": [photo[9]]}]
    expected = [ids(engine.recommend(**p)) for p in profiles]
    reads: list[int] = []
    original = engine.catalog.embedding_items

    def counted(embedding_ids: Any, *args: Any) -> Any:
        reads.append(len(embedding_ids))
        return original(embedding_ids, *args)

    monkeypatch.setattr(engine.catalog, "embedding_items", counted)
    assert [ids(r) for r in engine.recommend_batch(profiles)] == expected
    assert len([n for n in reads if n]) == 1, reads


def test_the_garbage_collector_waits_for_the_end_of_a_batch(world: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Off while the batch hydrates its pages, on again after it, after an error too; a caller who
    turned it off keeps it off."""
    import gc

    engine: Engine = world["engine"]
    photo = world["photo"]
    seen: list[bool] = []
    original = engine.catalog.items

    def watched(item_ids: Any) -> Any:
        seen.append(gc.isenabled())
        return original(item_ids)

    monkeypatch.setattr(engine.catalog, "items", watched)
    assert gc.isenabled()
    assert engine.recommend_batch([{"like": [photo[0]]}, {"like": [photo[1]]}])[0].results
    assert seen == [False] and gc.isenabled()
    with pytest.raises(NotFound):
        engine.recommend_batch([{"like": [photo[0]]}, {"like": [99_999]}])
    assert gc.isenabled()
    monkeypatch.setattr(engine.catalog, "embedding_items", lambda *a: 1 / 0)  # fails inside the batch
    with pytest.raises(ZeroDivisionError):
        engine.recommend(like=[photo[2]], k=30)
    assert gc.isenabled()
    monkeypatch.undo()
    gc.disable()
    try:
        engine.recommend(like=[photo[0]])
        assert not gc.isenabled()
    finally:
        gc.enable()
