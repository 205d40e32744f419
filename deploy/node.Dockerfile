# A hospital node: Flower's official SuperNode image plus this workbench (its ClientApp runs here).
FROM flwr/supernode:1.42.0
USER root
COPY . /src
RUN python -m pip install --no-cache-dir -c /src/constraints.txt /src && rm -rf /src
USER app
ENTRYPOINT ["workbench", "node", "start"]
