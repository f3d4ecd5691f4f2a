# Export: each variant's model as a MindSpore graph (MINDIR; AIR too with export.air on Ascend), loaded back
# and checked against the checkpoint model before it counts as written; optionally ONNX through Hugging Face.


rule export:
    input:
        ckpt=f"{RESULTS}/{{variant}}/model.ckpt",
    output:
        **export_files("{variant}"),
    log:
        f"{RESULTS}/logs/export_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_{{variant}}.tsv"
    params:
        script=script("export.py"),
        height=config["export"]["input_size"][0],
        width=config["export"]["input_size"][1],
        air=lambda wildcards, output: ["--air", output.air] if "air" in output.keys() else [],
        num_classes=lambda wildcards: train_settings(wildcards.variant)["num_classes"],
        device=config["device"],
    resources:
        npu=npus(),  # one device (0 on CPU); export.py takes a free one (segformer.devices)
    conda:
        "../envs/segformer.yaml"
    shell:
        "python {params.script:q} --variant {wildcards.variant} --ckpt {input.ckpt:q}"
        " --out {output.mindir:q} {params.air:q} --height {params.height} --width {params.width}"
        " --num_classes {params.num_classes} --device {params.device} > {log:q} 2>&1"


rule export_hf:
    input:
        ckpt=f"{RESULTS}/{{variant}}/model.ckpt",
    output:
        folder=directory(f"{RESULTS}/{{variant}}/hf"),
    log:
        f"{RESULTS}/logs/export_hf_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_hf_{{variant}}.tsv"
    params:
        script=script("convert_model.py"),
    conda:
        "../envs/convert.yaml"
    shell:
        "python {params.script:q} --src {input.ckpt:q} --dst {output.folder:q}"
        " --variant {wildcards.variant} --to hf > {log:q} 2>&1"


# Its own environment: onnx and onnxruntime need numpy 2, which MindSpore cannot load.
rule export_onnx:
    input:
        hf=f"{RESULTS}/{{variant}}/hf",
    output:
        onnx=f"{RESULTS}/{{variant}}/segformer_{{variant}}.onnx",
    log:
        f"{RESULTS}/logs/export_onnx_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export_onnx_{{variant}}.tsv"
    params:
        python=os.path.expanduser(config["export"]["onnx_python"]),  # quoted below: ~ expanded here
        script=script("export_onnx.py"),
        height=config["export"]["input_size"][0],
        width=config["export"]["input_size"][1],
    conda:
        "../envs/onnx.yaml"
    shell:
        "{params.python:q} {params.script:q} --hf_dir {input.hf:q} --out {output.onnx:q}"
        " --height {params.height} --width {params.width} > {log:q} 2>&1"
