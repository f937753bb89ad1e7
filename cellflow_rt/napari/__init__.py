"""napari plugin: segment image layers with cellflow-rt, tune thresholds instantly, open and save
Cellpose ``_seg.npy`` files.

Installed with ``pip install 'cellflow-rt[napari]'``; napari finds it through the ``napari.manifest``
entry point (``napari.yaml`` in this folder). Only napari imports this package; it uses the public
pipeline API (:func:`cellflow_rt.pipeline.predict` / :func:`~cellflow_rt.pipeline.finish`) and
nothing else in cellflow-rt imports it.

=====================  ======================================================================
module                 job
=====================  ======================================================================
``session.py``         runs requests: model cache, network-output cache, dynamics-only re-runs
``progress.py``        a network wrapper that reports tiles done and stops when cancelled
``layers.py``          image layer -> array and axes; results -> Labels / flow / cellprob layers
``_widget.py``         the dock widget (Qt): options, Run / Cancel, thread worker, notifications
``_reader.py``         ``*_seg.npy`` -> image + Labels layers (restricted unpickler)
``_writer.py``         Labels layer -> ``_cp_masks.tif`` / ``_seg.npy`` in Cellpose's format
``_sample_data.py``    the bundled example image
=====================  ======================================================================
"""
