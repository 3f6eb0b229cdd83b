"""Drawings and text of recurrent genotypes."""

from tf_amended_darts.language import genotype as G
from tf_amended_darts.language import visualize


def test_png_and_text(tmp_path):
    g = G.load("DARTS_V2")
    (path,) = visualize.plot_genotype(g, str(tmp_path / "cell"), "DARTS_V2")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    text = visualize.genotype_to_text(g)
    assert text.splitlines()[0] == "node 1 <- sigmoid(state 0)"
    assert text.splitlines()[-1].startswith("h_t = mean(states 1, 2")
