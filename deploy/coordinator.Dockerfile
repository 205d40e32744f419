# The coordinator: Flower's official SuperLink image plus this workbench (its ServerApp runs here).
FROM flwr/superlink:1.42.0
USER root
COPY . /src
RUN python -m pip install --no-cache-dir -c /src/constraints.txt /src && rm -rf /src
USER app
ENTRYPOINT ["workbench", "coordinator", "start"]
