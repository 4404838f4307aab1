# GPU image: CUDA-enabled PyTorch base with the fusion package installed in editable mode.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e . \
    && rm -rf /root/.cache

ENTRYPOINT ["python"]
CMD ["infer.py"]
