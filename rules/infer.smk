# Inference rendering: each variant's predictions drawn (train ids, colours, overlay, label ids for the
# Cityscapes test server), with the inference mode of the evaluation.


rule infer:
    input:
        ckpt=f"{RESULTS}/{{variant}}/model.ckpt",
        images=infer_images(),
    output:
        folder=directory(f"{RESULTS}/{{variant}}/infer"),
        preview=report(
            f"{RESULTS}/{{variant}}/infer_preview.png",
            caption="../report/infer_preview.rst",
            category="Predictions",
            labels={"variant": "{variant}"},
        ),
    log:
        f"{RESULTS}/logs/infer_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/infer_{{variant}}.tsv"
    params:
        script=script("infer.py"),
        settings=inference_settings(),
        limit=config["infer"]["limit"],
        num_classes=lambda wildcards: train_settings(wildcards.variant)["num_classes"],
        device=config["device"],
    resources:
        npu=npus(),  # one device (0 on CPU); infer.py takes a free one (segformer.devices)
    conda:
        "../envs/segformer.yaml"
    shell:
        "python {params.script:q} --variant {wildcards.variant} --ckpt {input.ckpt:q} --images {input.images:q}"
        " --out_dir {output.folder:q} --preview {output.preview:q} --limit {params.limit}"
        " --settings {params.settings:q} --num_classes {params.num_classes} --device {params.device}"
        " > {log:q} 2>&1"
