"""The stop-when-stable rule on scripted genotype sequences."""

import json

import pytest

from tf_amended_darts.jobs import stopping
from tf_amended_darts.vision import genotype as G


def _genotype(k, epoch=0):
    """Distinct genotypes for distinct k (metadata does not count)."""
    normal = tuple(
        ("skip_connect" if i < k else "sep_conv_3x3", i % 2) for i in range(8)
    )
    reduce = tuple(("sep_conv_3x3", i % 2) for i in range(8))
    return G.Genotype(
        normal, (2, 3, 4, 5), reduce, (2, 3, 4, 5), metadata={"epoch": epoch}
    )


def _feed(stopper, sequence, first_epoch=1):
    """Feeds the sequence; returns the epochs after which it said stop."""
    stops = []
    for epoch, k in enumerate(sequence, first_epoch):
        if stopper.update(epoch, _genotype(k, epoch)):
            stops.append(epoch)
    return stops


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_stops_after_exactly_k_unchanged_epochs(patience):
    stopper = stopping.StableGenotypeStop(patience)
    # changes at epochs 2 and 3; genotype 2 appears at epoch 3
    sequence = [0, 1, 2] + [2] * 5
    stops = _feed(stopper, sequence)
    assert stops[0] == 3 + patience
    stopper = stopping.StableGenotypeStop(patience)
    for epoch, k in enumerate(sequence, 1):
        stopper.update(epoch, _genotype(k, epoch))
        if epoch == 3 + patience:
            break
    assert stopper.stable_since == 3
    assert stopper.unchanged_epochs == patience
    assert stopper.metadata() == {
        "stable_since_epoch": 3,
        "epochs_run": 3 + patience,
        "stop_when_stable": patience,
        "stopped_when_stable": True,
    }


def test_a_change_resets_the_count_and_zero_never_stops():
    stopper = stopping.StableGenotypeStop(2)
    assert _feed(stopper, [0, 0, 1, 1, 0, 0, 0, 0]) == [7, 8]
    assert stopper.stable_since == 5
    never = stopping.StableGenotypeStop(0)
    assert _feed(never, [0] * 10) == []
    assert never.stable_since == 1 and never.unchanged_epochs == 9
    assert stopping.StableGenotypeStop(1).stable_since is None


def test_metadata_does_not_count():
    a, b = _genotype(3, epoch=1), _genotype(3, epoch=7)
    assert stopping.fingerprint(a) == stopping.fingerprint(b)
    assert stopping.fingerprint(a) != stopping.fingerprint(_genotype(4))


def test_resume_keeps_the_count(tmp_path):
    path = tmp_path / stopping.STATE_FILE
    sequence = [0, 1, 1, 1, 1, 1]
    straight = stopping.StableGenotypeStop(4)
    straight_stops = _feed(straight, sequence)
    assert straight_stops == [6]

    first = stopping.StableGenotypeStop(4, path)
    for epoch, k in enumerate(sequence[:4], 1):
        first.update(epoch, _genotype(k))
        first.save()
    # A crash after epoch 4's state was saved but before its checkpoint:
    # the run resumes after epoch 3 and redoes epoch 4.
    resumed = stopping.for_stage(4, tmp_path, 3)
    assert resumed.epochs == 3 and resumed.unchanged_epochs == 1
    assert _feed(resumed, sequence[3:], first_epoch=4) == straight_stops
    assert resumed.fingerprints == straight.fingerprints


def test_resume_reads_per_epoch_genotypes_when_the_state_is_missing(tmp_path):
    genotypes = tmp_path / "genotypes"
    genotypes.mkdir()
    for epoch, k in enumerate([0, 1, 1], 1):
        G.save(_genotype(k, epoch), str(genotypes / f"epoch_{epoch:03d}.json"))
    stopper = stopping.for_stage(1, tmp_path, 3)
    assert stopper.stable_since == 2 and stopper.should_stop
    with pytest.raises(ValueError, match="epoch 4"):
        stopping.for_stage(2, tmp_path, 4)


def test_state_file_errors(tmp_path):
    path = tmp_path / "stopping.json"
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="Invalid stop-rule state"):
        stopping.StableGenotypeStop(1, path)
    with pytest.raises(ValueError, match="stop_when_stable"):
        stopping.StableGenotypeStop(-1)
    stopper = stopping.StableGenotypeStop(1)
    with pytest.raises(ValueError, match="missing"):
        stopper.update(2, _genotype(0))
    with pytest.raises(ValueError, match="records 0 epochs"):
        stopper.truncate(1)


class _Network:
    def __init__(self, sequence):
        self.sequence = list(sequence)
        self.calls = 0

    def genotype(self):
        self.calls += 1
        return _genotype(self.sequence[self.calls - 1])


def test_monitor_logs_and_saves(tmp_path):
    stopper = stopping.StableGenotypeStop(1, tmp_path / stopping.STATE_FILE)
    monitor = stopping.StabilityMonitor(_Network([5, 5, 6]), stopper)
    logs = [{}, {}, {}]
    for epoch in range(3):
        monitor.on_epoch_end(epoch, logs[epoch])
    assert [log[stopping.STABLE_SINCE] for log in logs] == [1.0, 1.0, 3.0]
    assert [log[stopping.UNCHANGED] for log in logs] == [0.0, 1.0, 0.0]
    saved = json.loads((tmp_path / stopping.STATE_FILE).read_text())
    assert len(saved["fingerprints"]) == 3
