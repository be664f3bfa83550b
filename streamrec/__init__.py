"""streamrec kernel: the shared contracts (settings, schemas, Kafka/Redis plumbing, features,
encoder, index, ranking head, model store, metrics) that the four services build on. The CLI and
`up` live above the services, in `launcher/`."""

__version__ = "0.1.0"
