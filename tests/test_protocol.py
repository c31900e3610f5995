"""The reference inference protocol: context frames, question windows, key-frame passes and naming."""

import json

import numpy as np
import pytest

from glus_jax.inference import protocol as P


def _reference_clips(frame_num, c):
    # inference_video's construction, transcribed
    indices = np.linspace(0, frame_num, c + 1, dtype=int)
    clips = []
    for i in range(int(np.ceil(frame_num / c))):
        clips.append([int(min(indices[j] + i, indices[j + 1] - 1)) for j in range(c)])
    return clips


@pytest.mark.parametrize("n", [4, 5, 7, 10, 16, 33, 64, 101])
def test_frame_clips_match_reference_construction(n):
    assert P.frame_clips(n) == _reference_clips(n, 4)


def test_context_frames_by_hand():
    assert P.context_frames(10) == [1, 3, 6, 8]  # the oracle's video
    # n=16: indices [0,4,8,12,16], 4 clips, middle clip i=2 -> [2,6,10,14]
    assert P.context_frames(16) == [2, 6, 10, 14]
    # n=5: indices [0,1,2,3,5], 2 clips, clip 1 -> [min(1,0), min(2,1), min(3,2), min(4,4)]
    assert P.context_frames(5) == [0, 1, 2, 4]


def test_question_window_slides_over_last_four():
    assert P.question_window(0) == [0]
    assert P.question_window(2) == [0, 1, 2]
    assert P.question_window(3) == [0, 1, 2, 3]
    assert P.question_window(9) == [6, 7, 8, 9]
    assert P.question_window(5, question_frame_num=2) == [4, 5]


@pytest.mark.parametrize(
    "n, k, passes, source",
    [
        (10, 0, [list(range(10))], [(0, i) for i in range(10)]),
        # key frame in the middle: forward 4..9, backward 4..0; backward wins for frames 0..4
        (10, 4, [[4, 5, 6, 7, 8, 9], [4, 3, 2, 1, 0]],
         [(1, 4), (1, 3), (1, 2), (1, 1), (1, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]),
        # key frame at the end: forward is the single last frame, backward covers everything
        (6, 5, [[5], [5, 4, 3, 2, 1, 0]], [(1, 5), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0)]),
    ],
)
def test_key_frame_passes_and_every_frame_under_its_own_name(n, k, passes, source):
    got = P.key_frame_passes(n, k)
    assert got == passes
    merged = P.merge_passes(got, n)
    assert merged == source
    # each frame's mask comes from a pass position that really is that frame
    assert all(got[p][pos] == f for f, (p, pos) in enumerate(merged))


def test_key_frame_out_of_range():
    with pytest.raises(P.ProtocolError, match="outside"):
        P.key_frame_passes(5, 5)


def test_score_json_both_value_types_and_round_trip(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"v0_0": "4", "v1_2": 7}))
    scores = P.load_score_json(path)
    assert scores == {"v0_0": 4, "v1_2": 7}
    P.save_score_json(scores, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == {"v0_0": "4", "v1_2": "7"}
    assert P.load_score_json(tmp_path / "out.json") == scores


def test_key_frame_index_uses_frame_numbers():
    names = ["00010", "00000", "00005", "00015"]  # sorted by number: 0, 5, 10, 15
    assert P.key_frame_index({"v_1": 10}, "v", "1", names) == 2
    assert P.key_frame_index({}, "v", "1", names) == 0  # no entry: plain forward run
    with pytest.raises(P.ProtocolError, match="not a frame"):
        P.key_frame_index({"v_1": 3}, "v", "1", names)


@pytest.mark.parametrize("content, message", [("{", "malformed JSON"), ("[1]", "expected an object"),
                                               ('{"v_0": "x"}', "not a frame number")])
def test_bad_score_files(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(P.ProtocolError, match=message):
        P.load_score_json(path)
