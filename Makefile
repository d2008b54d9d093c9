# One-command setup. `make test` and `make demo` create .venv, install the pinned dependencies
# (once: a stamp keyed on requirements.txt makes the second call a no-op) and run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.deps-$(shell sha256sum requirements.txt setup.py | sha256sum | cut -c1-12)
D2_STAMP := $(VENV)/.detectron2
D2_WHEEL := sal_detectron2-0.7.2-cp310-none-any.whl
D2_SHA256 := 491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
D2_UPSTREAM := https://github.com/facebookresearch/detectron2.git
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install test demo bench clean

install: $(DEPS_STAMP) $(D2_STAMP)

$(PY):
	python3 -m venv $(VENV)

$(DEPS_STAMP): requirements.txt setup.py | $(PY)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.deps-* && touch $@

# detectron2 is not on PyPI. Prefer upstream source; where it cannot be reached (no network but the
# package registries), take only the pure-Python `detectron2` package out of the sha256-checked
# sal-detectron2 wheel. Its CUDA-12 `_C` extension is left out: the project runs without it.
$(D2_STAMP): $(DEPS_STAMP)
	@if $(PY) -c "import detectron2" 2>/dev/null; then echo "detectron2 already importable"; \
	elif timeout 15 git ls-remote -q $(D2_UPSTREAM) HEAD >/dev/null 2>&1; then \
	  $(PIP) install -q --no-build-isolation "git+$(D2_UPSTREAM)"; \
	else \
	  set -e; tmp=$$(mktemp -d); \
	  $(PIP) download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
	    --platform any -d $$tmp sal-detectron2==0.7.2; \
	  echo "$(D2_SHA256)  $$tmp/$(D2_WHEEL)" | sha256sum -c --quiet; \
	  site=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	  unzip -q -o $$tmp/$(D2_WHEEL) 'detectron2/*' -x 'detectron2/_C*' -d $$site; \
	  rm -rf $$tmp; echo "installed detectron2 (Python package of sal-detectron2==0.7.2, no _C)"; \
	fi
	$(PY) -W 'ignore:`torch.jit.script` is deprecated:FutureWarning' -c "import detectron2, detectron2.modeling.backbone.vit"
	touch $@

test: install
	$(PY) -m pytest -q tests

# The projects on built-in synthetic data: depth (tiny DPT SN-Net, ~1 min), classification (tiny DeiT3-style SN-Net,
# ~1 min), detection (tiny Mask R-CNN ViTDet SN-Net, ~5 min) then segmentation (tiny SETR SN-Net, ~1 min); each ends
# with its per-stitch report. The runs go to $(DEMO_DIR)/{depth,classification,detection,segmentation}; a demo there
# is never deleted unasked: `make demo DEMO_OVERWRITE=1` replaces it (the CLIs' --overwrite).
DEMO_DIR ?= output/demo
demo: install
	set -e; export OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}; \
	dpt=$(DEMO_DIR)/depth; out=$(DEMO_DIR)/detection; seg=$(DEMO_DIR)/segmentation; \
	cls=$(DEMO_DIR)/classification; \
	overwrite=$(if $(DEMO_OVERWRITE),--overwrite,); \
	for run in $$dpt $$out $$seg $$cls; do \
	  if [ -z "$$overwrite" ] && [ -n "$$(ls -A $$run 2>/dev/null)" ]; then \
	    echo "make demo: $$run holds a previous demo: rerun with 'make demo DEMO_OVERWRITE=1' to replace it, or" \
	      "'make demo DEMO_DIR=output/demo2' to keep it" >&2; exit 2; \
	  fi; \
	done; \
	$(PY) datasets/make_synthetic_nyu.py --output data/nyu_synthetic --train 40 --test 10 --size 128 160; \
	$(PY) projects/snnet_dpt/train.py --config-file projects/snnet_dpt/configs/synthetic/dpt_snnetv2_tiny.py \
	  --export-stitch 5 $$overwrite train.output_dir=$$dpt; \
	$(PY) projects/snnet_dpt/demo.py --weights $$dpt/stitch_5/model_final.pth --output $$dpt/demo $$overwrite \
	  --input data/nyu_synthetic/official_splits/test/synthetic_room_0000/rgb_00002.jpg; \
	ccfg=projects/snnet_cls/configs/synthetic/snnetv2_tiny.py; \
	$(PY) datasets/make_synthetic_imagefolder.py --output data/imagefolder_synthetic; \
	$(PY) projects/snnet_cls/train.py --config-file $$ccfg --stitch none $$overwrite train.output_dir=$$cls; \
	$(PY) projects/snnet_cls/train.py --config-file $$ccfg --eval-only --stitch all --export-stitch 5 $$overwrite \
	  train.output_dir=$$cls; \
	$(PY) projects/snnet_cls/demo.py --weights $$cls/stitch_5/model_final.pth \
	  --input data/imagefolder_synthetic/val/circle/00002.JPEG; \
	cfg=projects/snnet_vitdet/configs/synthetic/mask_rcnn_snnetv2_tiny.py; \
	$(PY) -m datasets.make_synthetic_coco --output output/synthetic_coco; \
	$(PY) projects/snnet_vitdet/train_net.py --config-file $$cfg $$overwrite train.output_dir=$$out; \
	$(PY) projects/snnet_vitdet/train_net.py --config-file $$cfg --eval-only --stitch all \
	  train.output_dir=$$out train.init_checkpoint=$$out/model_final.pth; \
	$(PY) projects/snnet_vitdet/demo.py --config-file $$cfg --weights $$out/model_final.pth --stitch 5 \
	  --input output/synthetic_coco/val/000002.png --confidence-threshold 0.3 --output $$out/demo $$overwrite; \
	scfg=projects/snnet_setr/configs/synthetic/setr_snnetv2_tiny.py; \
	[ -d output/synthetic_ade20k/ADEChallengeData2016 ] || $(PY) datasets/make_synthetic_segmentation.py --layout ade20k; \
	$(PY) projects/snnet_setr/train_net.py --config-file $$scfg $$overwrite train.output_dir=$$seg; \
	$(PY) projects/snnet_setr/train_net.py --config-file $$scfg --eval-only --stitch all train.output_dir=$$seg; \
	$(PY) projects/snnet_setr/demo.py --config-file $$scfg --weights $$seg/model_final.pth --stitch 5 --output $$seg/demo \
	  --input output/synthetic_ade20k/ADEChallengeData2016/images/validation/ADE_val_00000002.jpg $$overwrite; \
	cat $$dpt/stitch_report_nyuv2_synthetic_test/stitch_report.md $$cls/stitch_report_synthetic_val/stitch_report.md \
	  $$out/stitch_report_synthetic_shapes_val/stitch_report.md \
	  $$seg/stitch_report_synthetic_ade20k_sem_seg_val/stitch_report.md; \
	echo; echo "depth training:   $$dpt/{log.txt,metrics.json,model_final.pth} (tensorboard --logdir $$dpt)"; \
	echo "depth report:     $$dpt/stitch_report_nyuv2_synthetic_test/stitch_report.{md,csv,png} (exported stitch 5: $$dpt/stitch_5/model_final.pth)"; \
	echo "depth demo:       $$dpt/demo/rgb_00002_depth.{png,npy}"; \
	echo "classification report: $$cls/stitch_report_synthetic_val/stitch_report.{md,csv,png} (exported stitch 5: $$cls/stitch_5/model_final.pth)"; \
	echo "detection report: $$out/stitch_report_synthetic_shapes_val/stitch_report.{md,csv,png}"; \
	echo "detection demo:   $$out/demo/000002.png"; \
	echo "segmentation report: $$seg/stitch_report_synthetic_ade20k_sem_seg_val/stitch_report.{md,csv,png}"; \
	echo "segmentation demo:   $$seg/demo/ADE_val_00000002_{seg,overlay}.png"

bench: install
	set -e; for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script; done

clean:
	rm -rf $(VENV) output .pytest_cache
