; Canvas Chat's Windows installer: a per-user install (no admin) that carries uv.exe, the app wheel,
; the pinned requirements and bootstrap.py, then lets uv fetch Python, CUDA torch and the libraries.
; Build it with `bash installer/build.sh`, which stages the files and passes STAGE_DIR and OUTFILE.
;
; Command line: /S silent, /D=C:\path install folder (last, unquoted), /REPAIR re-run the bootstrap
; with --repair on the existing install (what the "Repair Canvas Chat" shortcut does).
; Test only: the environment variable CANVAS_CHAT_SETUP_TEST_SKIP_DEPS=1 skips the Python download
; and the bootstrap (the wine smoke test has no network); it only runs `uv.exe --version`.

Unicode true
Target amd64-unicode
ManifestDPIAware true
!ifndef COMPRESSOR
  !define COMPRESSOR lzma
!endif
SetCompressor /SOLID ${COMPRESSOR}

!ifndef STAGE_DIR
  !error "Build with: bash installer/build.sh"
!endif
!include "${STAGE_DIR}/build.nsh"            ; VERSION, VI_VERSION, APP_WHEEL, OUTFILE
!include "${STAGE_DIR}/bootstrap-defines.nsh" ; exit codes and messages, from bootstrap.py

!define PRODUCT "Canvas Chat"
!define PUBLISHER "Canvas Chat contributors"
!define REG_UNINST "Software\Microsoft\Windows\CurrentVersion\Uninstall\CanvasChat"
; engine/paths.py: platformdirs, appname "CanvasChat", appauthor False. On Windows its data, config,
; logs and models folders are all this one (tests/installer/test_user_data_location.py checks it).
!define USER_DATA_DIR "$LOCALAPPDATA\CanvasChat"
!define SM_FOLDER "$SMPROGRAMS\Canvas Chat"
!define APP_EXE "$INSTDIR\env\Scripts\canvas-chat.exe"
!define SETUP_COPY "$INSTDIR\setup\CanvasChat-Setup.exe"

Name "${PRODUCT}"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\CanvasChat"
InstallDirRegKey HKCU "${REG_UNINST}" "InstallLocation"
RequestExecutionLevel user
BrandingText "${PRODUCT} ${VERSION}"
ShowInstDetails show
ShowUninstDetails show
; NSIS would count only its own 30 MB; the real need depends on the GPU, which bootstrap.py checks.
SpaceTexts none
DirText "Setup will install ${PRODUCT} in this folder. Python, PyTorch and the app's libraries are downloaded into it: keep about 10 GB free on its drive (3 GB on a PC without an NVIDIA RTX GPU).$\r$\n$\r$\nYour chats and settings are stored elsewhere and survive upgrades and uninstalls."

VIProductVersion "${VI_VERSION}"
VIAddVersionKey "ProductName" "${PRODUCT}"
VIAddVersionKey "CompanyName" "${PUBLISHER}"
VIAddVersionKey "FileDescription" "${PRODUCT} Setup"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "LegalCopyright" "Apache-2.0"

!include "MUI2.nsh"
!include "LogicLib.nsh"
!include "FileFunc.nsh"
!include "WinVer.nsh"
!include "x64.nsh"

Var Repair      ; 1 when started with /REPAIR
Var Failed      ; 1 once a step failed
Var SkipDeps    ; 1 in the wine smoke test

!define MUI_ICON "${STAGE_DIR}/canvas-chat.ico"
!define MUI_UNICON "${STAGE_DIR}/canvas-chat.ico"
!define MUI_ABORTWARNING
!define MUI_FINISHPAGE_NOAUTOCLOSE
!define MUI_UNFINISHPAGE_NOAUTOCLOSE

!define MUI_WELCOMEPAGE_TEXT "Setup installs ${PRODUCT} ${VERSION} for your Windows account (no administrator rights needed).$\r$\n$\r$\nIt then downloads Python and PyTorch for your NVIDIA RTX graphics card: up to 3 GB, so keep the PC online. Your chats and settings are kept across upgrades.$\r$\n$\r$\n$_CLICK"
!define MUI_PAGE_CUSTOMFUNCTION_PRE SkipPageInRepair
!insertmacro MUI_PAGE_WELCOME
!define MUI_PAGE_CUSTOMFUNCTION_PRE SkipPageInRepair
!define MUI_PAGE_CUSTOMFUNCTION_LEAVE CheckInstallDirLength
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!define MUI_PAGE_CUSTOMFUNCTION_PRE SkipFinishIfFailed
!define MUI_FINISHPAGE_RUN
!define MUI_FINISHPAGE_RUN_TEXT "Start ${PRODUCT}"
!define MUI_FINISHPAGE_RUN_FUNCTION LaunchApp
!insertmacro MUI_PAGE_FINISH

!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES

!insertmacro MUI_LANGUAGE "English"

; Shows a failure, sets the installer's exit code to the bootstrap's code and stops.
!macro FailWith CODE
  !insertmacro BOOTSTRAP_MESSAGE ${CODE} $R9
  StrCpy $Failed 1
  MessageBox MB_ICONSTOP "$R9$\r$\n$\r$\nDetails: $INSTDIR\logs" /SD IDOK
  SetErrorLevel ${CODE}
  Abort "$R9"
!macroend

Function .onInit
  SetShellVarContext current
  StrCpy $Repair 0
  StrCpy $Failed 0
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/REPAIR" $R1
  ${IfNot} ${Errors}
    StrCpy $Repair 1
  ${EndIf}
  ReadEnvStr $R1 "CANVAS_CHAT_SETUP_TEST_SKIP_DEPS"
  ${If} $R1 == "1"
    StrCpy $SkipDeps 1
  ${Else}
    StrCpy $SkipDeps 0
  ${EndIf}
  ${IfNot} ${RunningX64}
    MessageBox MB_ICONSTOP "${PRODUCT} needs 64-bit Windows 10 or 11." /SD IDOK
    SetErrorLevel 1
    Quit
  ${EndIf}
FunctionEnd

Function SkipPageInRepair
  ${If} $Repair == 1
    Abort
  ${EndIf}
FunctionEnd

Function SkipFinishIfFailed
  ${If} $Failed == 1
    Abort
  ${EndIf}
FunctionEnd

Function CheckInstallDirLength
  StrLen $R0 "$INSTDIR"
  ${If} $R0 > ${BOOTSTRAP_MAX_INSTALL_DIR_LENGTH}
    !insertmacro BOOTSTRAP_MESSAGE ${EXIT_PATH_TOO_LONG} $R9
    MessageBox MB_ICONEXCLAMATION "$R9"
    Abort ; stay on the directory page
  ${EndIf}
FunctionEnd

Function LaunchApp
  Exec '"${APP_EXE}"'
FunctionEnd

Section "-Program files" SecFiles
  ; Silent installs skip the directory page, so check the length here too.
  StrLen $R0 "$INSTDIR"
  ${If} $R0 > ${BOOTSTRAP_MAX_INSTALL_DIR_LENGTH}
    !insertmacro FailWith ${EXIT_PATH_TOO_LONG}
  ${EndIf}
  ${If} $Repair == 1
    DetailPrint "Repairing ${PRODUCT} in $INSTDIR"
  ${EndIf}

  SetOutPath "$INSTDIR\uv"
  File "${STAGE_DIR}/uv/uv.exe"
  SetOutPath "$INSTDIR\payload"
  Delete "$INSTDIR\payload\canvas_chat-*.whl" ; the previous version's wheel, on upgrade
  File "${STAGE_DIR}/payload/${APP_WHEEL}"
  File "${STAGE_DIR}/payload/requirements.txt"
  File "${STAGE_DIR}/payload/requirements-torch-cu128.txt"
  File "${STAGE_DIR}/payload/requirements-torch-cpu.txt"
  SetOutPath "$INSTDIR"
  File "${STAGE_DIR}/bootstrap.py"
  File "${STAGE_DIR}/machine.py"
  File "${STAGE_DIR}/canvas-chat.ico"
  WriteUninstaller "$INSTDIR\Uninstall.exe"

  ; Keep this setup next to the program: the Repair shortcut re-runs it with /REPAIR.
  ${If} "$EXEPATH" != "${SETUP_COPY}"
    CreateDirectory "$INSTDIR\setup"
    CopyFiles /SILENT "$EXEPATH" "${SETUP_COPY}"
  ${EndIf}

  WriteRegStr HKCU "${REG_UNINST}" "DisplayName" "${PRODUCT}"
  WriteRegStr HKCU "${REG_UNINST}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${REG_UNINST}" "Publisher" "${PUBLISHER}"
  WriteRegStr HKCU "${REG_UNINST}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${REG_UNINST}" "DisplayIcon" "$INSTDIR\canvas-chat.ico"
  WriteRegStr HKCU "${REG_UNINST}" "UninstallString" '"$INSTDIR\Uninstall.exe"'
  WriteRegStr HKCU "${REG_UNINST}" "QuietUninstallString" '"$INSTDIR\Uninstall.exe" /S'
  WriteRegDWORD HKCU "${REG_UNINST}" "NoModify" 1
  WriteRegDWORD HKCU "${REG_UNINST}" "NoRepair" 1

  ; The Repair shortcut exists even when a later step fails (e.g. an old driver), so that the
  ; user can fix the cause and finish the install from the Start menu.
  CreateDirectory "${SM_FOLDER}"
  CreateShortCut "${SM_FOLDER}\Repair ${PRODUCT}.lnk" "${SETUP_COPY}" "/REPAIR" "$INSTDIR\canvas-chat.ico" 0
  CreateShortCut "${SM_FOLDER}\Uninstall ${PRODUCT}.lnk" "$INSTDIR\Uninstall.exe"
SectionEnd

Section "-Python, PyTorch and libraries" SecDeps
  SetOutPath "$INSTDIR"
  ${If} $SkipDeps == 1
    DetailPrint "TEST MODE (CANVAS_CHAT_SETUP_TEST_SKIP_DEPS=1): skipping Python, PyTorch and the libraries."
    CreateDirectory "$INSTDIR\logs"
    nsExec::ExecToStack '"$INSTDIR\uv\uv.exe" --version'
    Pop $R0
    Pop $R1
    FileOpen $R2 "$INSTDIR\logs\setup-test-mode.txt" w
    FileWrite $R2 "skipped dependencies; uv.exe --version exit=$R0 output=$R1"
    FileClose $R2
    Return
  ${EndIf}

  ; uv keeps Python and its cache inside the install folder, so uninstalling removes them, and
  ; registers nothing (--no-registry, --no-bin): the user's other Pythons stay as they were.
  System::Call 'Kernel32::SetEnvironmentVariable(t "UV_PYTHON_INSTALL_DIR", t "$INSTDIR\python")'
  System::Call 'Kernel32::SetEnvironmentVariable(t "UV_CACHE_DIR", t "$INSTDIR\cache")'
  System::Call 'Kernel32::SetEnvironmentVariable(t "UV_NO_CONFIG", t "1")'
  System::Call 'Kernel32::SetEnvironmentVariable(t "PYTHONUNBUFFERED", t "1")'
  ; Trust the certificates Windows trusts, so TLS-inspecting corporate proxies work.
  System::Call 'Kernel32::SetEnvironmentVariable(t "UV_SYSTEM_CERTS", t "1")'

  DetailPrint "Downloading Python ${BOOTSTRAP_PYTHON_VERSION} (about 30 MB)..."
  nsExec::ExecToLog '"$INSTDIR\uv\uv.exe" python install ${BOOTSTRAP_PYTHON_VERSION} --no-bin --no-registry --no-progress --color never'
  Pop $R0
  ${If} $R0 != 0
    DetailPrint "uv python install ended with: $R0"
    ${If} $R0 == "error"
    ${OrIf} $R0 < 0
      ; uv.exe did not start at all (an NTSTATUS such as 0xC0000135): damaged or blocked, not offline.
      !insertmacro FailWith ${EXIT_SETUP_FILES_MISSING}
    ${EndIf}
    !insertmacro FailWith ${EXIT_PYTHON_DOWNLOAD_FAILED}
  ${EndIf}

  StrCpy $R1 ""
  ${If} $Repair == 1
    StrCpy $R1 "--repair"
  ${EndIf}
  DetailPrint "Checking this PC and installing ${PRODUCT}'s libraries (log: $INSTDIR\logs)..."
  nsExec::ExecToLog '"$INSTDIR\uv\uv.exe" run --no-project --no-config --managed-python --python ${BOOTSTRAP_PYTHON_VERSION} --color never "$INSTDIR\bootstrap.py" --install-dir "$INSTDIR" $R1'
  Pop $R0
  ${If} $R0 != 0
    DetailPrint "bootstrap.py ended with: $R0"
    ${If} $R0 == "error"
      StrCpy $R0 ${EXIT_SETUP_FILES_MISSING}
    ${ElseIf} $R0 < 0
      StrCpy $R0 ${EXIT_INTERNAL_ERROR} ; the Python process crashed
    ${EndIf}
    !insertmacro FailWith $R0
  ${EndIf}

  ; Shown once the install succeeded: e.g. "no RTX GPU, the app will use the CPU".
  ${If} ${FileExists} "$INSTDIR\finish-note.txt"
    FileOpen $R2 "$INSTDIR\finish-note.txt" r
    FileRead $R2 $R3
    FileClose $R2
    MessageBox MB_ICONINFORMATION "$R3" /SD IDOK
  ${EndIf}
SectionEnd

Section "-Shortcuts" SecShortcuts
  SetOutPath "$PROFILE"  ; the app's working folder
  CreateShortCut "${SM_FOLDER}\${PRODUCT}.lnk" "${APP_EXE}" "" "$INSTDIR\canvas-chat.ico" 0
  CreateShortCut "$DESKTOP\${PRODUCT}.lnk" "${APP_EXE}" "" "$INSTDIR\canvas-chat.ico" 0
  ${GetSize} "$INSTDIR" "/S=0K" $R0 $R1 $R2
  IntFmt $R0 "0x%08X" $R0
  WriteRegDWORD HKCU "${REG_UNINST}" "EstimatedSize" "$R0"
SectionEnd

Function un.onInit
  SetShellVarContext current
  ; Windows cannot rename a folder that a running program uses: removing half of a running app's
  ; files would leave a broken install behind, so ask the user to close it first.
  ${If} ${FileExists} "$INSTDIR\env\*.*"
    check_in_use:
    ClearErrors
    Rename "$INSTDIR\env" "$INSTDIR\env.in-use-check"
    ${If} ${Errors}
      MessageBox MB_RETRYCANCEL|MB_ICONEXCLAMATION "${PRODUCT} is running. Close it, then click Retry." /SD IDCANCEL IDRETRY check_in_use
      SetErrorLevel ${EXIT_APP_RUNNING}
      Quit
    ${EndIf}
    Rename "$INSTDIR\env.in-use-check" "$INSTDIR\env"
  ${EndIf}
FunctionEnd

Section "Uninstall"
  Delete "${SM_FOLDER}\${PRODUCT}.lnk"
  Delete "${SM_FOLDER}\Repair ${PRODUCT}.lnk"
  Delete "${SM_FOLDER}\Uninstall ${PRODUCT}.lnk"
  RMDir "${SM_FOLDER}"
  Delete "$DESKTOP\${PRODUCT}.lnk"

  ; Only what Setup created: the user may have pointed Setup at a folder that holds other files.
  RMDir /r "$INSTDIR\env"
  RMDir /r "$INSTDIR\python"
  RMDir /r "$INSTDIR\cache"
  RMDir /r "$INSTDIR\uv"
  RMDir /r "$INSTDIR\payload"
  RMDir /r "$INSTDIR\setup"
  RMDir /r "$INSTDIR\logs"
  Delete "$INSTDIR\bootstrap.py"
  Delete "$INSTDIR\machine.py"
  Delete "$INSTDIR\canvas-chat.ico"
  Delete "$INSTDIR\install-state.json"
  Delete "$INSTDIR\finish-note.txt"
  Delete "$INSTDIR\Uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegKey HKCU "${REG_UNINST}"

  ; User data is never in the install folder. Keep it unless the user says otherwise; a silent
  ; uninstall (/S) keeps it.
  ${If} ${FileExists} "${USER_DATA_DIR}\*.*"
    MessageBox MB_YESNO|MB_ICONQUESTION|MB_DEFBUTTON2 "Also delete your ${PRODUCT} chats, settings, logs and the models converted for it?$\r$\n$\r$\n${USER_DATA_DIR}$\r$\n$\r$\nChoose No to keep them for a later install. Models downloaded into the Hugging Face cache are kept either way." /SD IDNO IDNO keep_user_data
    RMDir /r "${USER_DATA_DIR}"
    DetailPrint "Deleted ${USER_DATA_DIR}"
    Goto user_data_done
    keep_user_data:
    DetailPrint "Kept your chats and settings in ${USER_DATA_DIR}"
    user_data_done:
  ${EndIf}
SectionEnd
