"""The catalogue's structure at serving time: filters, facets and filtered retrieval.

- ``filters``: what a request may narrow to (``Filter``), and what an item must be to pass;
- ``columns``: the live catalogue as columns (``CatalogColumns``), kept by index notifications;
- ``retrieval``: lexical and dense retrieval that keep recall under a selective filter;
- ``facets``: counts over the query's matches, each facet under the other filters.
"""
