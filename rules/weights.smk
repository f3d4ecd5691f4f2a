# Weight conversion: the authors' PyTorch checkpoints (or Hugging Face files) -> MindSpore.


rule convert_pretrained:
    input:
        source=pretrained_input,
    output:
        ckpt=f"{RESULTS}/pretrained/mit_{{variant}}.ckpt",
    log:
        f"{RESULTS}/logs/convert_pretrained_{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_pretrained_{{variant}}.tsv"
    params:
        script=script("convert_model.py"),
    conda:
        "../envs/convert.yaml"
    shell:
        "python {params.script:q} --src {input.source:q}"
        " --dst {output.ckpt:q} --variant {wildcards.variant} > {log:q} 2>&1"
