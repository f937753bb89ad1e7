"""The plugin's npe2 manifest: valid, registered by the entry point, every command importable."""
import pytest

npe2 = pytest.importorskip("npe2", reason="npe2 comes with napari (pip install -e '.[napari]')")


def test_manifest_is_registered_valid_and_importable():
    manifest = npe2.PluginManifest.from_distribution("cellflow-rt")
    manifest.validate_imports()  # imports every python_name the manifest names
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == ["cellflow-rt"]
    assert [r.filename_patterns for r in contributions.readers] == [["*_seg.npy"]]
    assert sorted(ext for w in contributions.writers for ext in w.filename_extensions) == [".npy", ".tif"]
    assert [s.key for s in contributions.sample_data] == ["example_nuclei"]
