"""One loaded ONNX Runtime model serves several threads at once with exactly the answers it gives one at a time.

An app or server loads a model once and calls ``infer`` from many request threads; rtool's Runtime keeps
no per-call state, and ONNX Runtime sessions allow concurrent ``run`` calls. Each thread runs its own
batches many times, interleaved with the others, and every result must equal the sequential one bit for bit.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from runtimes import open_runtime
from toolkit.data import load_dataset
from toolkit.preprocess import prepare_batch

THREADS = 4
ROUNDS = 12


@pytest.fixture(scope="module")
def batches() -> list[np.ndarray]:
    """Real test digits in batches of several sizes (1 to 17): each thread gets its own mix."""
    test = load_dataset("mnist5k").test.images.numpy()
    sizes = [1, 4, 7, 16, 17, 2, 9, 12]
    starts = np.cumsum([0, *sizes[:-1]])
    return [test[s : s + n] for s, n in zip(starts, sizes)]


@pytest.mark.parametrize("file", ["model.onnx", "model.int8-cpu.onnx"])
def test_one_runtime_from_four_threads_gives_the_sequential_logits(cpu_export_dir, batches, file):
    with open_runtime("onnxruntime", cpu_export_dir / file, "cpu") as rt:
        inputs = [prepare_batch(pixels, rt.card.input) for pixels in batches]
        expected = [rt.infer(x) for x in inputs]
        start = threading.Barrier(THREADS)

        def worker(number: int) -> list[tuple[int, np.ndarray]]:
            start.wait()  # all threads call into the one session together
            order = np.random.default_rng(number).permutation(len(inputs) * ROUNDS) % len(inputs)
            return [(int(i), rt.infer(inputs[i])) for i in order]

        with ThreadPoolExecutor(THREADS) as pool:
            results = [r for future in [pool.submit(worker, n) for n in range(THREADS)] for r in future.result()]
    assert len(results) == THREADS * ROUNDS * len(inputs)
    for index, logits in results:
        assert logits.shape == expected[index].shape
        assert np.array_equal(logits, expected[index]), (file, index, np.abs(logits - expected[index]).max())
