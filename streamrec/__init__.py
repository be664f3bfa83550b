"""streamrec kernel: the shared contracts (settings, schemas, Kafka/Redis plumbing, features,
encoder, index, ranking head, metrics, CLI) that the four services build on."""

__version__ = "0.1.0"
