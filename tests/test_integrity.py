"""A flipped bit is caught: every file vitbook writes and reads back is checked against the digest
it was written with, the last good checkpoint survives a damaged one, no caller can change the
data another caller gets, and two hostile arguments get errors that say what to pass."""

import shutil
import time

import pytest
import torch
from conftest import tiny_zoo_model

from vitbook import checkpoint, claims, claims_table, data, synthetic, train, zoo
from vitbook.checkpoint import CorruptFileError
from vitbook.model import ViT


def flip_a_bit_in(path, tensor: torch.Tensor) -> int:
    """Flip the lowest bit of the first byte of ``tensor``'s stored values in the file at
    ``path`` (a weight, not the file's framing); returns the byte's position."""
    raw = bytearray(path.read_bytes())
    needle = tensor.detach().cpu().contiguous().numpy().tobytes()[:32]
    at = raw.find(needle)
    assert at >= 0, "the tensor's bytes are stored as they are"
    raw[at] ^= 1
    path.write_bytes(bytes(raw))
    return at


@pytest.fixture
def tiny_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("VITBOOK_CACHE", str(tmp_path))
    monkeypatch.setenv("VITBOOK_ZOO_RELEASE", "off")
    calls = []

    def train_it(model):
        calls.append(1)
        with torch.no_grad():
            model.head.weight.normal_()
        return {"test_accuracy": 0.5}

    entry = zoo.register(tiny_zoo_model("tiny-integrity", train_it))
    yield entry, calls
    zoo.REGISTRY.pop("tiny-integrity")


def test_a_zoo_model_with_one_flipped_bit_is_refused_not_served(tiny_entry):
    entry, calls = tiny_entry
    weight = zoo.get("tiny-integrity").head.weight
    flip_a_bit_in(entry.path(), weight)
    with pytest.raises(CorruptFileError) as e:
        zoo.get("tiny-integrity")
    message = str(e.value)
    assert entry.path().name in message and "SHA-256" in message
    assert "Delete the file" in message and "retrain=True" in message
    assert "Nothing was overwritten" in message and len(calls) == 1  # not retrained behind our back
    zoo.get("tiny-integrity", retrain=True)  # only when asked
    assert len(calls) == 2


def test_a_zoo_file_copied_or_re_saved_with_the_same_content_still_loads(tiny_entry, tmp_path):
    # the negative control: the check fires on changed bytes, not on a new file or a new time
    entry, _ = tiny_entry
    model = zoo.get("tiny-integrity")
    path = entry.path()
    shutil.copy(path, tmp_path / "copy.pt")
    time.sleep(0.01)
    shutil.copy(tmp_path / "copy.pt", path)  # new mtime, same bytes
    checkpoint.save_checkpoint(path, checkpoint.load_checkpoint(path))  # re-saved, same content
    assert torch.equal(zoo.get("tiny-integrity").head.weight, model.head.weight)


def test_a_checkpoint_with_one_flipped_bit_is_not_resumed(tmp_path, tiny_cfg):
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    ckpt = tmp_path / "run.pt"
    recipe = dict(epochs=4, batch_size=16, lr=1e-3, warmup_epochs=0.0)
    model = ViT(tiny_cfg)
    train.fit(model, (x, y), None, recipe, checkpoint=ckpt, checkpoint_every=2, progress=False,
              stop_at_step=8)  # fmt: skip
    state = train.load_checkpoint(ckpt)
    flip_a_bit_in(ckpt, state["model"]["head.weight"])
    with pytest.raises(CorruptFileError) as e:
        train.fit(ViT(tiny_cfg), (x, y), None, recipe, checkpoint=ckpt, progress=False)
    message = str(e.value)
    prev = checkpoint.previous_path(ckpt)
    assert str(ckpt) in message and "SHA-256" in message and str(prev) in message
    # the previous checkpoint was kept, verifies, and resumes the run
    assert checkpoint.load_checkpoint(prev)["step"] < 8
    shutil.move(prev, ckpt)
    history = train.fit(ViT(tiny_cfg), (x, y), None, recipe, checkpoint=ckpt, progress=False)
    assert history.final["epoch"] == 4


def test_a_checkpoint_resaved_with_identical_content_resumes(tmp_path, tiny_cfg):
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    ckpt = tmp_path / "run.pt"
    recipe = dict(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0.0)
    train.fit(ViT(tiny_cfg), (x, y), None, recipe, checkpoint=ckpt, progress=False, stop_at_step=4)
    train.save_checkpoint(ckpt, train.load_checkpoint(ckpt))
    assert train.fit(ViT(tiny_cfg), (x, y), None, recipe, checkpoint=ckpt, progress=False).final


def test_a_file_torch_wrote_without_a_digest_is_not_taken_as_verified(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"step": 1}, path)
    with pytest.raises(CorruptFileError, match="carries no digest"):
        checkpoint.load_checkpoint(path)


def test_one_callers_edit_never_reaches_another_caller():
    first = data.mnist("test")
    pristine = first.images[0].clone(), first.labels[:5].clone()
    x, y = first.tensors()
    x[0] += 1
    y[:5] = 9
    first.images[0] += 1
    first.labels[:5] = 9
    again = data.mnist("test")
    assert torch.equal(again.images[0], pristine[0]) and torch.equal(again.labels[:5], pristine[1])
    bank, labels, _ = synthetic.glyph_bank()
    bank += 1
    labels[:] = 0
    assert synthetic.glyph_bank()[0].max() <= 1 and synthetic.glyph_bank()[1].max() == 9


def test_a_claims_record_edited_on_disk_is_caught(tmp_path, monkeypatch):
    path = tmp_path / "run.jsonl"
    monkeypatch.setenv("VITBOOK_CLAIMS", str(path))
    claims.Claims("00_test").check("a finding", 0.9, above=0.5)
    assert claims_table.load_runs([str(path)])["run"][0]["value"] == 0.9
    path.write_text(path.read_text().replace('"value": 0.9', '"value": 0.95'))
    with pytest.raises(ValueError, match="does not match the digest"):
        claims_table.load_runs([str(path)])


def test_evaluate_on_an_empty_dataset_says_so(tiny_cfg):
    empty = data.mnist("test").subset(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"empty dataset \(0 images\).*at least one"):
        train.evaluate(ViT(tiny_cfg), empty)


@pytest.mark.parametrize("device, hint", [("gpu", "'cuda'"), ("apple", "'mps'"), ("tpu", "'cpu'")])
def test_a_device_torch_does_not_know_names_the_one_to_pass(tiny_cfg, device, hint):
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with pytest.raises(
        ValueError, match=rf"device='{device}' is not a device torch knows: .*{hint}"
    ):
        train.fit(ViT(tiny_cfg), (x, y), None, dict(epochs=1, batch_size=8), device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_a_gpu_says_what_is_here(tiny_cfg):
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with pytest.raises(ValueError, match="which this machine does not have.*cpu"):
        train.fit(ViT(tiny_cfg), (x, y), None, dict(epochs=1, batch_size=8), device="cuda")
