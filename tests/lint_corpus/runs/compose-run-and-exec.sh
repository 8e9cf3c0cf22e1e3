#!/bin/sh
# clean: no docker run here is unsafe: `docker compose run` and `docker exec` are not `docker run`
# Commands around a compose project; the only `docker run` writes to its volume.
docker compose up -d mlflow
docker exec -it mlflow ls /mlruns
docker run --rm -v results:/results --user 1000 python:3.11-slim python -c "print(1)" --output_dir /results/x
