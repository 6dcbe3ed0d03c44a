# One image for every service; compose.yaml picks the project and the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.txt ./
COPY common ./common
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home shop && mkdir -p /app/var && chown shop /app/var
USER shop
