# Evaluation: score each variant's model on the val split (whole, slide or multi-scale + flip, as the
# config's `evaluate` section says; scored at the labels' full resolution).


rule evaluate:
    input:
        ckpt=f"{RESULTS}/{{variant}}/model.ckpt",
        val_list=f"{RESULTS}/data/val.txt",
    output:
        miou=f"{RESULTS}/{{variant}}/miou.csv",
    log:
        f"{RESULTS}/logs/evaluate_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_{{variant}}.tsv"
    params:
        script=script("evaluate.py"),
        settings=inference_settings(),
        num_classes=lambda wildcards: train_settings(wildcards.variant)["num_classes"],
        device=config["device"],
    resources:
        npu=npus(),  # one device (0 on CPU); evaluate.py takes a free one (segformer.devices)
    conda:
        "../envs/segformer.yaml"
    shell:
        "python {params.script:q} --variant {wildcards.variant} --ckpt {input.ckpt:q}"
        " --data_path {input.val_list:q} --out {output.miou:q} --settings {params.settings:q}"
        " --num_classes {params.num_classes} --device {params.device} > {log:q} 2>&1"
