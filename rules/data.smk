# Data stage: the demo dataset (only when no dataset_root is configured) and label conversion.


rule demo_dataset:
    output:
        root=directory(DEMO_ROOT),
    log:
        f"{RESULTS}/logs/demo_dataset.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo_dataset.tsv"
    params:
        script=script("make_demo.py"),
        seed=config["demo"]["seed"],
        width=config["demo"]["width"],
        height=config["demo"]["height"],
        train=config["demo"]["train_images"],
        val=config["demo"]["val_images"],
    conda:
        "../envs/segformer.yaml"
    shell:
        "python {params.script:q} {output.root:q} --seed {params.seed}"
        " --width {params.width} --height {params.height}"
        " --train {params.train} --val {params.val} > {log:q} 2>&1"


rule convert_labels:
    input:
        dataset=dataset_input(),
    output:
        train_list=f"{RESULTS}/data/train.txt",
        val_list=f"{RESULTS}/data/val.txt",
        manifest=f"{RESULTS}/data/manifest.json",
    log:
        f"{RESULTS}/logs/convert_labels.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_labels.tsv"
    params:
        script=script("convert_dataset.py"),
        root=lambda wildcards: dataset_root(),
        out_dir=lambda wildcards, output: Path(output.manifest).parent,
    threads: config["labels"]["nproc"]
    conda:
        "../envs/segformer.yaml"
    shell:
        "python {params.script:q} {params.root:q} --nproc {threads}"
        " --out_dir {params.out_dir:q} --lists_dir {params.out_dir:q}"
        " --manifest {output.manifest:q} > {log:q} 2>&1"
