# Training: one job per variant; several devices or nodes make it one data-parallel msrun job.
# A variant whose `weights` is a trained checkpoint is imported instead (import_trained).


rule train:
    input:
        unpack(pretrained_checkpoint),
        train_list=f"{RESULTS}/data/train.txt",
        val_list=f"{RESULTS}/data/val.txt",
    output:
        ckpt=f"{RESULTS}/{{variant}}/model.ckpt",
        train_log=f"{RESULTS}/{{variant}}/train_log.csv",
        curve=report(
            f"{RESULTS}/{{variant}}/train_curve.png",
            caption="../report/train_curve.rst",
            category="Training",
            labels={"variant": "{variant}"},
        ),
    log:
        f"{RESULTS}/logs/train_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_{{variant}}.tsv"
    params:
        launcher=script("launch_train.py"),
        per_node=lambda wildcards: per_node_prefix(),
        settings=lambda wildcards: json.dumps(train_settings(wildcards.variant), sort_keys=True),
        pretrained=pretrained_flag,  # shell-quoted in common.smk
        validation=lambda wildcards: validation_flag(wildcards.variant),  # shell-quoted in common.smk
        devices=config["devices"],
        nodes=config["nodes"],
        device=config["device"],
        precision=config["precision"],
        state_dir=lambda wildcards, output: Path(output.ckpt).with_name("train_state"),
        msrun_dir=lambda wildcards, output: Path(output.ckpt).with_name("msrun"),
    wildcard_constraints:
        variant=trained_here(),
    threads: train_threads()
    resources:
        nodes=config["nodes"],
        tasks=config["nodes"],  # one launcher per node; each starts its node's msrun workers
        npu=npus(config["devices"]),  # devices per node (0 on CPU); the launcher or train.py takes free ones
        # SLURM: the generic resources per node (sbatch --gres, config `slurm_gres`; none by default)...
        gres=slurm_gres(),
        tasks_per_gpu=0,  # ...and no --ntasks-per-gpu when they are GPUs: one launcher per node
        # Several nodes: Snakemake's job runs in the batch script, not in a one-task srun step that
        # would hold node 1's CPUs and hand its SLURM_NTASKS=1 to the per-node srun (plugin's MPI path).
        mpi="srun" if config["nodes"] > 1 else None,
    conda:
        "../envs/segformer.yaml"
    shell:
        "{params.per_node}python {params.launcher:q} --devices {params.devices} --nodes {params.nodes}"
        " --log_dir {params.msrun_dir:q} --"
        " --variant {wildcards.variant} --settings {params.settings:q}"
        " --train_list {input.train_list:q} --val_list {input.val_list:q} {params.pretrained} {params.validation}"
        " --ckpt {output.ckpt:q} --log_csv {output.train_log:q} --curve {output.curve:q}"
        " --state_dir {params.state_dir:q} --device {params.device} --precision {params.precision}"
        " > {log:q} 2>&1"


rule import_trained:
    input:
        source=lambda wildcards: config["weights"][wildcards.variant],
    output:
        ckpt=f"{RESULTS}/{{variant}}/model.ckpt",
    log:
        f"{RESULTS}/logs/import_trained_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/import_trained_{{variant}}.tsv"
    params:
        script=script("convert_model.py"),
        num_classes=lambda wildcards: train_settings(wildcards.variant)["num_classes"],
    wildcard_constraints:
        variant=imported(),
    conda:
        "../envs/convert.yaml"
    shell:
        "python {params.script:q} --src {input.source:q} --dst {output.ckpt:q}"
        " --variant {wildcards.variant} --num_classes {params.num_classes} > {log:q} 2>&1"
