# Export: each variant's model as a MindSpore graph (MINDIR; AIR too on Ascend), loaded back and checked
# against the checkpoint model before it counts as written.


rule export:
    input:
        ckpt=f"{RESULTS}/{{variant}}/model.ckpt",
    output:
        **export_files("{variant}"),
    log:
        f"{RESULTS}/logs/export_{{variant}}.log",
    params:
        script=script("export.py"),
        height=config["export"]["input_size"][0],
        width=config["export"]["input_size"][1],
        air=lambda wildcards, output: f"--air {output.air}" if "air" in output.keys() else "",
        num_classes=lambda wildcards: train_settings(wildcards.variant)["num_classes"],
        device=config["device"],
    wildcard_constraints:
        variant="b[0-5]",
    conda:
        "../envs/segformer.yaml"
    shell:
        "python {params.script} --variant {wildcards.variant} --ckpt_file {input.ckpt}"
        " --out {output.mindir} {params.air} --height {params.height} --width {params.width}"
        " --num_classes {params.num_classes} --device {params.device} > {log} 2>&1"
