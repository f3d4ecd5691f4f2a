# Evaluation: score each variant's model on the val split (whole-image inference).


rule evaluate:
    input:
        ckpt=f"{RESULTS}/{{variant}}/model.ckpt",
        val_list=f"{RESULTS}/data/val.txt",
    output:
        miou=f"{RESULTS}/{{variant}}/miou.csv",
    log:
        f"{RESULTS}/logs/evaluate_{{variant}}.log",
    params:
        script=script("evaluate.py"),
        num_classes=lambda wildcards: train_settings(wildcards.variant)["num_classes"],
        device=config["device"],
    wildcard_constraints:
        variant="b[0-5]",
    conda:
        "../envs/segformer.yaml"
    shell:
        "python {params.script} --variant {wildcards.variant} --eval_ckpt_path {input.ckpt}"
        " --data_path {input.val_list} --out {output.miou} --num_classes {params.num_classes}"
        " --device {params.device} > {log} 2>&1"
