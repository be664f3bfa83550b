# One image for all four services; docker-compose picks the command.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# CPU torch from the PyTorch index first, so `pip install .` finds the pin satisfied (no CUDA wheels).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY streamrec ./streamrec
COPY consumers ./consumers
COPY learner ./learner
COPY index_updater ./index_updater
COPY serving ./serving
COPY launcher ./launcher
RUN pip install .
ENV STREAMREC_STATE_DIR=/state STREAMREC_DATA_DIR=/data
VOLUME ["/state"]
ENTRYPOINT ["streamrec"]
CMD ["serve"]
