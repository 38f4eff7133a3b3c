#!/usr/bin/env bash
# Runs the README's commands on tiny random models, offline: the README's file names are replaced by small images made
# here, and short step counts / tiny-model flags are added. Exit 0 when every command exits 0 (a few minutes on 2 cores).
#   bash scripts/check_readme_commands.sh        (STYLEFORGE=/path/to/styleforge to test another install)
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SF="${STYLEFORGE:-$ROOT/.venv/bin/styleforge}"
PY="$(dirname "$SF")/python"
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT; cd "$W"
export STYLEFORGE_CACHE=$W/cache HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
E="$ROOT/examples"
cp $E/content_landscape.png photo.png; cp $E/style_coffee.png look.png; cp $E/style_astronaut.png a.png; cp $E/style_coffee.png b.png
"$PY" - <<'PY'
from PIL import Image, ImageDraw
im=Image.new("L",(384,256),0); ImageDraw.Draw(im).rectangle([0,150,384,256],fill=255); im.save("region.png"); im.save("m1.png")
im=Image.new("L",(384,256),0); ImageDraw.Draw(im).rectangle([0,0,384,100],fill=255); im.save("m2.png")
for n in ("giraffe","zebra","cat","painting","art","face"):
    Image.open("photo.png").resize((48,32)).rotate(len(n) * 10).save(f"{n}.png")
import os; os.makedirs("photos",exist_ok=True); os.makedirs("pairs/content",exist_ok=True); os.makedirs("pairs/reference",exist_ok=True)
for i in range(2):
    Image.open("photo.png").resize((32,32)).rotate(30*i).save(f"photos/p{i}.png")
    Image.open("photo.png").resize((64,64)).rotate(20*i).save(f"pairs/content/c{i}.png")
    Image.open("look.png").resize((64,64)).rotate(20*i).save(f"pairs/reference/c{i}.png")
PY
ok=0; bad=0
run() { echo "+ $*"; if "$@" > log.txt 2>&1; then ok=$((ok+1)); else bad=$((bad+1)); echo "  FAILED rc=$?"; tail -3 log.txt; fi; }
$SF tiny-model tiny-sd > /dev/null 2>&1; $SF tiny-model tiny --family osasis > /dev/null 2>&1
M="--model tiny-sd"
run $SF region apply --content photo.png --style look.png --mask region.png -o out.png
run $SF region apply --content photo.png --style a.png --mask m1.png --style b.png --mask m2.png -o out2.png
run $SF region interpolate --source a.png --target b.png -o grid.png
mkdir -p data; for i in 0 1 2 3; do cp photo.png data/p$i.png; done
run $SF region train --data data/ --preset test -o rrun/ --iterations 2
run $SF appearance --structure giraffe.png --appearance zebra.png --domain animal -o app.png --save-strip $M --steps 10 --skip-steps 2 --swap-range-full 1,9 --swap-range-half 1,7 --adain-range 3,10
run $SF translate cat.png --source cat --target dog -o dog.png --save-reconstruction $M --caption "a photo of a cat" --steps 4 --num-sentences 4
run $SF translate cat.png --source cat --target dog --contrastive-weight 0 -o dog.p2p0.png $M --caption "a photo of a cat" --steps 4 --num-sentences 4
run $SF direction build --source cat --target dog -o cat2dog.safetensors $M --num-sentences 4
run $SF translate cat.png --direction cat2dog.safetensors -o dog2.png $M --caption "a photo of a cat" --steps 4
run $SF invert cat.png --prompt "a photo of a cat" -o inv.safetensors $M --steps 4
run $SF pair train --content photo.png --styled painting.png --style "digital illustration" -o mystyle/ $M --iterations 2 --style-start 1 --resolution 32 --content-rank 4 --style-rank 4
run $SF pair apply --style mystyle/ --prompt "a photo of a dog" -o pdog.png --save-base --steps 3 --height 32 --width 32
run $SF pair apply --style mystyle/ --image photo.png --prompt "a photo of a dog" -o styled.png --steps 3
run $SF oneshot prepare --style art.png -o run/ --model tiny/ddpm --lpips-weight 0 --num-candidates 2 --steps 10
run $SF oneshot train   --style art.png -o run/ --model tiny/diffae --latent tiny/latent --clip tiny/clip --lpips-weight 0 --iterations 2 --batch-size 2 --latent-steps 5 --content-steps 3 --encode-steps 10 --decode-steps 4
run $SF oneshot apply   --run run/ --input photos/ -o out/ --encode-steps 10 --decode-steps 10
run $SF oneshot apply   --run run/ --input face.png -o out2/ --edit-source "face" --edit-target "smiling face" --latent tiny/latent --clip tiny/clip --edit-iterations 2 --encode-steps 10 --decode-steps 10
run $SF serve --help
run $SF compare pairs/ -o report/ --methods region --metrics ssim
run $SF cache info
run $SF batch region -o bout/ --content-dir photos/ --style-dir pairs/reference -- --strength 0.8 --size 64
printf 'structure,appearance\ngiraffe.png,zebra.png\n' > pairs.csv
run $SF batch appearance -o bout2/ --manifest pairs.csv --metrics ssim -- --domain animal $M --steps 10 --skip-steps 2 --swap-range-full 1,9 --swap-range-half 1,7 --adain-range 3,10
mkdir -p cats; cp cat.png cats/
run $SF batch translate -o bout3/ --content-dir cats/ --dry-run -- --source cat --target dog $M
run $SF cache clear
echo "README commands: $ok passed, $bad failed"; [ "$bad" = 0 ]
