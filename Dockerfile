# kwheel with its examples, for docker-compose.yml and deployments.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kwheel ./kwheel
COPY schemas ./schemas
COPY examples ./examples
RUN rm -f kwheel/schemas && cp -r schemas kwheel/schemas && pip install --no-cache-dir .
ENV KWHEEL_STATE_DIR=/var/lib/kwheel
ENTRYPOINT ["kwheel"]
