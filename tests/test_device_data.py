"""Images larger than memory stay memory-mapped: read a batch at a time, the same pixels as in memory."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from competition.spec import SPEC_DIR, load_spec
from pipelines.stages import device_data
from pipelines.stages.device_data import MappedImages, channel_stats


def _array(tmp_path, n=50) -> np.ndarray:
    np.save(tmp_path / "images.npy", np.random.default_rng(0).integers(0, 255, (n, 6, 5, 3), dtype=np.uint8))
    return np.load(tmp_path / "images.npy", mmap_mode="r")


def test_mapped_images_index_as_the_tensor_does(tmp_path, monkeypatch):
    array = _array(tmp_path)
    tensor = torch.from_numpy(np.array(array)).permute(0, 3, 1, 2).contiguous()
    mapped = MappedImages(array, torch.device("cpu"))
    assert mapped.shape == tuple(tensor.shape) and len(mapped) == 50
    index = torch.tensor([7, 3, 3, 49, 0])
    assert torch.equal(mapped[index], tensor[index]) and torch.equal(mapped[10:20], tensor[10:20])
    monkeypatch.setattr(device_data, "MATERIALISE_ROWS", 8)  # a large selection is a lazy view, sliced later
    view = mapped[torch.arange(5, 45)]
    assert isinstance(view, MappedImages) and len(view) == 40
    assert torch.equal(view[2:6], tensor[7:11]) and torch.equal(view[torch.tensor([0, 39])], tensor[[5, 44]])


def test_statistics_in_chunks_match_the_whole_array(tmp_path, monkeypatch):
    array = _array(tmp_path, n=37)
    monkeypatch.setattr(device_data, "STATS_CHUNK_BYTES", 5 * 6 * 5 * 3 * 8)  # five images a chunk
    mean, std = channel_stats(array)
    pixels = torch.from_numpy(np.array(array)).permute(3, 0, 1, 2).reshape(3, -1).float()
    assert np.allclose(mean, pixels.mean(dim=1).tolist(), rtol=1e-6)
    assert np.allclose(std, pixels.std(dim=1).clamp_min(1.0).tolist(), rtol=1e-5)


@pytest.mark.slow
def test_training_on_memory_mapped_images_predicts_as_in_memory(pipeline_env, host, tmp_path, monkeypatch):
    from pipelines.context import setup
    from pipelines.stages.train import FoldJob, FoldOptions, train_fold

    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    spec["profiles"] = {"quick": {"folds": [0], "models": [
        {"model": "cnn3", "model_args": {"width": 16}, "epochs": 2, "batch_size": 64,
         "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "light", "shift": 1}}]}}
    path = tmp_path / "digits-mapped.yaml"
    path.write_text(yaml.safe_dump(spec))
    in_memory = setup(load_spec(str(path)), "quick")
    monkeypatch.setenv("KPIPE_MEMMAP", "1")
    mapped = setup(load_spec(str(path)), "quick")
    assert isinstance(mapped.data.images, MappedImages) and isinstance(in_memory.data.images, torch.Tensor)
    assert np.allclose(mapped.data.mean, in_memory.data.mean, rtol=1e-6)
    # The same normalisation constants (they differ in the last float32 digit): then the same predictions.
    mapped_inputs = dataclasses.replace(mapped.inputs, data=dataclasses.replace(
        mapped.data, mean=in_memory.data.mean, std=in_memory.data.std))
    run = in_memory.profile.models[0]
    first = train_fold(FoldJob(in_memory.inputs, run, 0))
    oof, test = np.load(first.folder / "oof_probs.npy"), np.load(first.folder / "test_probs.npy")
    second = train_fold(FoldJob(mapped_inputs, run, 0), FoldOptions(force=True))  # the same folder, written again
    assert np.array_equal(np.load(second.folder / "oof_probs.npy"), oof)
    assert np.array_equal(np.load(second.folder / "test_probs.npy"), test)


def test_prepare_writes_images_larger_than_memory_straight_to_disk(tmp_path, monkeypatch):
    from tests.test_prepare import _csv_images_competition, _spec

    from pipelines.stages.prepare import _store, image_allocator
    from pipelines.stages.readers import read_competition

    _csv_images_competition(tmp_path / "raw")
    in_memory = read_competition(_spec("csv_images"), tmp_path / "raw")
    monkeypatch.setenv("KPIPE_MEMMAP", "1")
    staging = tmp_path / "staging"
    staging.mkdir()
    on_disk = read_competition(_spec("csv_images"), tmp_path / "raw", image_allocator(staging))
    assert isinstance(on_disk.train_images, np.memmap) and np.array_equal(on_disk.train_images, in_memory.train_images)
    assert np.array_equal(on_disk.test_images, in_memory.test_images)
    _store(on_disk.train_images, staging / "train_images.npy")  # renamed, not copied
    assert sorted(p.name for p in staging.iterdir()) == ["scratch-1.npy", "train_images.npy"]
    assert np.array_equal(np.load(staging / "train_images.npy"), in_memory.train_images)


def test_a_disk_too_small_for_the_arrays_is_an_error_before_any_write(tmp_path, monkeypatch):
    import errno
    import os

    from pipelines.stages import prepare as prepare_stage

    monkeypatch.setenv("KPIPE_MEMMAP", "1")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as refused:
        prepare_stage.image_allocator(tmp_path)((10, 8, 8, 1))
    assert refused.value.errno == errno.ENOSPC
