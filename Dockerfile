FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libmagic1 tesseract-ocr fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/* && pip install --no-cache-dir uv
WORKDIR /app
COPY . .
RUN uv sync --frozen --no-dev
ENV PATH=/app/.venv/bin:$PATH
