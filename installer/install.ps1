# Install vcam (Windows) into a virtual environment with the right PyTorch build, or upgrade it in place.
#   powershell -ExecutionPolicy Bypass -File installer\install.ps1 [-Prefix DIR] [-Demo]
#   powershell -ExecutionPolicy Bypass -File installer\install.ps1 [-Prefix DIR] -Uninstall
# Environment: VCAM_TORCH (pip requirement for torch), VCAM_TORCH_INDEX (PyTorch index to try as an extra index),
# VCAM_VENV (same as -Prefix; default .venv beside this repository), PYTHON (the Python that creates the environment).
#
# The same steps as installer/install.sh: CUDA torch where an NVIDIA driver answers (nvidia-smi), the CPU wheel
# elsewhere (PyPI's Windows wheel is the CPU one); PyTorch's index is an *extra* index, and when it cannot be reached
# one line says so and torch comes from the configured pip index. ONNX Runtime is the DirectML build on Windows
# (pyproject's markers). -Uninstall removes the environment (only vcam, in one it did not create), the service task
# if it runs this installation, vcam's caches and logs; it keeps presets and Hugging Face models.
[CmdletBinding()]
param(
    [string]$Prefix = "",
    [switch]$Demo,
    [switch]$Uninstall
)
$ErrorActionPreference = "Stop"
$Here = Split-Path -Parent $PSScriptRoot
if (-not $Prefix) { $Prefix = if ($env:VCAM_VENV) { $env:VCAM_VENV } else { Join-Path $Here ".venv" } }
$Venv = [System.IO.Path]::GetFullPath($Prefix)
$Marker = Join-Path $Venv ".vcam-installer"
$VenvPython = Join-Path $Venv "Scripts\python.exe"
$VenvVcam = Join-Path $Venv "Scripts\vcam.exe"

function Invoke-Checked([string]$What, [scriptblock]$Command) {
    & $Command
    if ($LASTEXITCODE -ne 0) { Write-Error "install.ps1: $What failed (exit $LASTEXITCODE)"; exit 1 }
}

function Remove-Vcam {
    if (-not (Test-Path $Marker)) {
        Write-Output "install.ps1: $Venv holds no vcam installed by this script; nothing removed"
        return
    }
    & $VenvVcam service uninstall --only-for $Venv
    $folders = & $VenvPython -c "import platformdirs; print(platformdirs.user_cache_dir('vcam')); print(platformdirs.user_state_dir('vcam'))"
    foreach ($folder in $folders) { if ($folder) { Remove-Item -Recurse -Force -ErrorAction SilentlyContinue $folder } }
    $kept = & $VenvPython -c "from vcam.presets import user_preset_dir; from engines.loading import hf_hub_cache_dir; print(f'your presets in {user_preset_dir()}, models in {hf_hub_cache_dir()}')"
    if ((Get-Content $Marker) -eq "created") {
        Remove-Item -Recurse -Force $Venv
        Write-Output "vcam: removed $Venv"
    } else {
        & $VenvPython -m pip uninstall -y -q vcam
        Remove-Item -Force $Marker
        Write-Output "vcam: removed vcam from $Venv (the environment was there before; it stays)"
    }
    Remove-Item -Recurse -Force -ErrorAction SilentlyContinue (Join-Path $Here "vcam.egg-info")
    if ($kept) { Write-Output "vcam: kept $kept" }
}

if ($Uninstall) { Remove-Vcam; exit 0 }

$Python = if ($env:PYTHON) { $env:PYTHON } else { "python" }
& $Python -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"
if ($LASTEXITCODE -ne 0) {
    Write-Error "install.ps1: vcam needs Python 3.10 or newer; install it from python.org and run again (or set PYTHON)"
    exit 1
}
if (-not (Test-Path $VenvPython)) {
    if ((Test-Path $Venv) -and (Get-ChildItem $Venv | Select-Object -First 1)) {
        Write-Error "install.ps1: $Venv exists and is not a virtual environment; pass -Prefix with a new or empty folder"
        exit 1
    }
    Invoke-Checked "creating the virtual environment" { & $Python -m venv $Venv }
    Set-Content -Path $Marker -Value "created"
} elseif (-not (Test-Path $Marker)) {
    Set-Content -Path $Marker -Value "reused"
}
Invoke-Checked "upgrading pip" { & $VenvPython -m pip install -q --disable-pip-version-check --upgrade pip }

$Nvidia = $false
if (Get-Command nvidia-smi -ErrorAction SilentlyContinue) {
    & nvidia-smi -L *> $null
    $Nvidia = ($LASTEXITCODE -eq 0)
}
if ($Nvidia) { $Build = "CUDA"; $Index = "https://download.pytorch.org/whl/cu126" }
else { $Build = "CPU"; $Index = "https://download.pytorch.org/whl/cpu" }
if ($env:VCAM_TORCH_INDEX) { $Index = $env:VCAM_TORCH_INDEX }
$Spec = if ($env:VCAM_TORCH) { $env:VCAM_TORCH } else { "torch" }

$HaveTorch = & $VenvPython -c "import torch; print(torch.__version__)" 2>$null
$IndexArgs = @()
try {
    Invoke-WebRequest -UseBasicParsing -TimeoutSec 10 -Uri ($Index.TrimEnd("/") + "/torch/") | Out-Null
    $IndexArgs = @("--extra-index-url", $Index)
} catch {
    Write-Output "vcam: PyTorch's index $Index cannot be reached; taking torch from your configured pip index instead (set VCAM_TORCH_INDEX to a mirror of it to choose the build)"
    $Index = ""
}
if ($HaveTorch -and -not $env:VCAM_TORCH -and -not $Index) {
    Write-Output "vcam: keeping the installed torch $HaveTorch (PyTorch's index is not in reach to upgrade it to the same build)"
} else {
    Write-Output "vcam: installing torch ($Build build: $Spec)"
    Invoke-Checked "installing torch" { & $VenvPython -m pip install -q --disable-pip-version-check --upgrade @IndexArgs $Spec }
}

$Extras = if ($Nvidia) { "test,tensorrt" } else { "test" }
Write-Output "vcam: installing vcam with [$Extras] into $Venv"
Invoke-Checked "installing vcam" {
    & $VenvPython -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy only-if-needed -e "$Here[$Extras]"
}
$Version = & $VenvVcam --version
Write-Output "vcam: installed $Version; next: $VenvVcam doctor, then $VenvVcam run (virtual camera: OBS Studio's Virtual Camera or Unity Capture)"

if ($Demo) {
    & $VenvVcam doctor --preset tiny
    & $VenvVcam demo --out .
}
