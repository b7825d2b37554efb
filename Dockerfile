# The quark_jax image for TPU hosts: GKE JobSets (launch/gke.py) run `quark train` in it, and the serving layer
# can run `quark serve` from it. Python 3.11 (JAX 0.10 needs >= 3.11), requirements-tpu.txt (jax[tpu] and
# libtpu: never the CPU build of JAX), the code in /app, installed editable so configs/ and tokenizers/ resolve
# from the working directory, which the JobSets set (workingDir: /app).
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPOSITORY/quark:TAG .
#   docker push REGION-docker.pkg.dev/PROJECT/REPOSITORY/quark:TAG
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first: a code change does not reinstall them.
COPY requirements.txt requirements-tpu.txt ./
RUN python -m pip install -r requirements-tpu.txt

COPY . .
RUN python -m pip install --no-deps -e .

# A JobSet gives its own command; this one only shows that the image works.
CMD ["python", "-m", "quark_jax.cli", "--help"]
