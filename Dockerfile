# One image for every process of the cluster: storage node, compute node (writer or reader) and proxy.
# docker-compose.yml runs it; `aurora-db` is the entry point, so the command names the role.
#
#   docker compose build                          with internet: python:3.11-slim and PyPI
#   docker build --build-arg BASE_IMAGE=IMAGE .   another base: any Debian-like image with Python 3.11+
#                                                 and its venv module
# Offline (no package index inside `docker build`): put the wheels of the dependencies and of
# setuptools and wheel in docker/wheelhouse/; when it holds wheels, pip installs from it alone.
# scripts/compose-e2e.sh fills it on the host and, with no registry either, makes a base image with
# debootstrap (DESIGN.md section 12).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# The label marks this project's images, so that scripts/compose-e2e.sh can delete the untagged ones
# each rebuild leaves behind, and nothing else.
LABEL org.opencontainers.image.title=aurora-db
ENV PATH=/opt/aurora-db/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/aurora-db
COPY docker/wheelhouse/ /wheelhouse/
COPY pyproject.toml /src/
# The dependencies first, in a layer of their own: a change to the code does not fetch them again.
RUN set -e; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; fi; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /src/requirements.txt; \
    pip install "$@" -r /src/requirements.txt
COPY README.md /src/
COPY aurora_db /src/aurora_db
COPY compute_node /src/compute_node
COPY storage_node /src/storage_node
COPY proxy /src/proxy
RUN set -e; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /wheelhouse; fi; \
    pip install "$@" --no-deps /src
COPY docker/aurora-db-docker /opt/aurora-db/bin/aurora-db-docker

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=aurora-db
ENV PATH=/opt/aurora-db/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PYTHONUNBUFFERED=1
RUN useradd --system --user-group --create-home --home-dir /home/aurora --shell /bin/sh aurora \
    && mkdir /data && chown aurora:aurora /data
COPY --from=build /opt/aurora-db /opt/aurora-db
USER aurora
# The working directory, where a storage node keeps its log and epoch: docker-compose.yml mounts a
# named volume here for every storage and compute node.
WORKDIR /data
ENTRYPOINT ["aurora-db"]
CMD ["--help"]
