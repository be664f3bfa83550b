"""index_updater: the only process that embeds. Catalog topic → encoder → compacted vectors topic,
plus periodic index snapshots that let serving replicas start fast (see ``service.py``)."""
