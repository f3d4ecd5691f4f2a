# The results table across variants: summary.csv (fractions), summary.md (percent, beside the paper's,
# mmsegmentation's and the MindSpore model zoo's numbers) and miou.png.


rule summary:
    input:
        miou=expand(f"{RESULTS}/{{variant}}/miou.csv", variant=config["variants"]),
    output:
        csv=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Results"),
        md=f"{RESULTS}/summary.md",
        png=report(f"{RESULTS}/miou.png", caption="../report/miou.rst", category="Results"),
    log:
        f"{RESULTS}/logs/summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/summary.tsv"
    params:
        script=script("summarize.py"),
        evaluation=evaluation_description(),
        flags=summary_flags(),
    conda:
        "../envs/segformer.yaml"
    shell:
        "python {params.script:q} --miou {input.miou:q} --out_csv {output.csv:q} --out_md {output.md:q}"
        " --out_png {output.png:q} --evaluation {params.evaluation:q} {params.flags} > {log:q} 2>&1"
