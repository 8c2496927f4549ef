import pytest

from readtalk.data.synthtalk import SynthConfig, generate


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A small SynthTalk dataset shared by the tests (6 clips, 3 identities, 256 px, 65 frames)."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(
        SynthConfig(
            clips=6, size=256, frames=65, identities=3, test_fraction=0.34, workers=2, seed=11
        ),
        out,
        progress=False,
    )
    return out
