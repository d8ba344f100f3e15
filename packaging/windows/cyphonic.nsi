; The CYPHONIC installer for 64-bit Windows 10 and later (NSIS 3). Built on Linux by
; build-installer.sh, which passes VERSION, VERSION_NUMERIC, PAYLOAD (a folder with
; cyphonicd.exe, cyphonic.exe, plugins\*.dll, scripts\*.lua, node.yaml.in), OUTFILE and
; COMPRESSOR. Behaviour, switches and exit codes: README.md next to this file.

Unicode true
Target amd64-unicode
SetCompressor ${COMPRESSOR}
RequestExecutionLevel admin
ManifestSupportedOS all
ManifestDPIAware true

!define PRODUCT "CYPHONIC"
!define PUBLISHER "CYPHONIC project"
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\CYPHONIC"
!define SERVICE_KEY "SYSTEM\CurrentControlSet\Services\cyphonic"
!define NRPT_KEY "SYSTEM\CurrentControlSet\Services\Dnscache\Parameters\DnsPolicyConfig\{f5cbd4f2-b81a-4e3d-aad7-0f42f693fae5}"
!define FIREWALL_RULE "CYPHONIC node"
; The placeholders of config/node.yaml: the node starts and waits for a real cloud.
!define DEFAULT_CLOUD_AS "192.0.2.1:7301"
!define DEFAULT_CLOUD_NMS "192.0.2.1:7302"
!define DEFAULT_CLOUD_KEY "cyphonic1:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
; Exit codes besides NSIS' own (0 done, 1 cancelled, 2 aborted).
!define EXIT_LOGIN_FAILED 3
!define EXIT_SERVICE_NOT_STARTED 4
!define EXIT_NOT_ADMIN 740
; How long one helper program may stay silent before nsExec gives up on it (ms).
!define EXEC_TIMEOUT 120000

Name "${PRODUCT}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\CYPHONIC"
BrandingText "${PRODUCT} ${VERSION}"
ShowInstDetails show
ShowUninstDetails show

VIProductVersion "${VERSION_NUMERIC}"
VIAddVersionKey "ProductName" "${PRODUCT}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "CompanyName" "${PUBLISHER}"
VIAddVersionKey "FileDescription" "${PRODUCT} ${VERSION} setup"
VIAddVersionKey "LegalCopyright" "Apache-2.0 OR MIT"

!include "MUI2.nsh"
!include "LogicLib.nsh"
!include "FileFunc.nsh"
!include "WordFunc.nsh"
!include "TextFunc.nsh"
!include "x64.nsh"
!include "WinVer.nsh"

Var DataDir        ; %ProgramData%\cyphonic: node.yaml, scripts, state (credential, node key)
Var Upgrade        ; 1 when a previous installation was found
Var DeviceId
Var Password
Var CloudAs
Var CloudNms
Var CloudKey
Var Purge          ; uninstaller: 1 with /PURGE
Var LogFile        ; handle of the open log file, "" when none
Var LoginResult    ; "" (not asked), "ok", "failed"
Var ServiceResult  ; "ok" or "failed"
Var CmdLineSafe    ; $CMDLINE with the /PASSWORD= value masked, for the log

!define MUI_ABORTWARNING
!define MUI_FINISHPAGE_RUN
!define MUI_FINISHPAGE_RUN_TEXT "Open the CYPHONIC starter page (log in, status)"
!define MUI_FINISHPAGE_RUN_FUNCTION OpenStarterPage
!define MUI_WELCOMEPAGE_TEXT "This installs CYPHONIC ${VERSION}: the node service (cyphonicd), the command-line tool and the plugins.$\r$\n$\r$\nThe service starts now and at every boot. Afterwards, log this device in on the starter page (Start menu: CYPHONIC).$\r$\n$\r$\nAn existing configuration and the device's credentials are kept."
!insertmacro MUI_PAGE_WELCOME
!define MUI_PAGE_CUSTOMFUNCTION_PRE SkipOnUpgrade
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

; ---------------------------------------------------------------------------------------
; Helpers shared by the installer and the uninstaller ("un." copies).

!macro Log text
  Push `${text}`
  !ifdef __UNINSTALL__
    Call un.LogLine
  !else
    Call LogLine
  !endif
!macroend
!define Log "!insertmacro Log"

; Runs a command line hidden, logs it with its exit code and output, and leaves the exit
; code ("error" if it could not start, "timeout") in $0 and the output in $1.
!macro Exec label cmdline
  ${Log} `${label}: ${cmdline}`
  nsExec::ExecToStack /TIMEOUT=${EXEC_TIMEOUT} `${cmdline}`
  Pop $0
  Pop $1
  ${Log} "  exit $0 $1"
!macroend
!define Exec "!insertmacro Exec"

!macro DefineHelpers un
; Writes the string on the stack, then CRLF, to the log file as UTF-8, and shows it.
Function ${un}LogLine
  Exch $R9
  DetailPrint "$R9"
  ${If} $LogFile != ""
    Push $R8
    StrCpy $R8 $LogFile
    Push "$R9$\r$\n"
    Call ${un}WriteUtf8
    Pop $R8
  ${EndIf}
  Pop $R9
FunctionEnd

; Writes the string on the stack to the open file handle $R8 as UTF-8 (NSIS' FileWrite
; would write the ANSI code page).
Function ${un}WriteUtf8
  Exch $R9
  Push $0
  Push $1
  Push $2
  System::Call 'kernel32::WideCharToMultiByte(i 65001, i 0, w R9, i -1, p 0, i 0, p 0, p 0) i .r0'
  ${If} $0 > 1
    System::Alloc $0
    Pop $1
    System::Call 'kernel32::WideCharToMultiByte(i 65001, i 0, w R9, i -1, p r1, i r0, p 0, p 0) i .r0'
    IntOp $0 $0 - 1
    System::Call 'kernel32::WriteFile(p R8, p r1, i r0, *i .r2, p 0) i .r2'
    System::Free $1
  ${EndIf}
  Pop $2
  Pop $1
  Pop $0
  Pop $R9
FunctionEnd

Function ${un}OpenLog
  Exch $R9
  ClearErrors
  FileOpen $LogFile "$R9" w
  ${If} ${Errors}
    StrCpy $LogFile ""
  ${EndIf}
  Pop $R9
  ${GetTime} "" "L" $0 $1 $2 $3 $4 $5 $6
  ${Log} "${PRODUCT} ${VERSION} $2-$1-$0 $4:$5:$6, command line: $CmdLineSafe"
FunctionEnd

Function ${un}CloseLog
  ${If} $LogFile != ""
    FileClose $LogFile
    StrCpy $LogFile ""
  ${EndIf}
FunctionEnd

Function ${un}RequireAdmin
  ${IfNot} ${RunningX64}
    MessageBox MB_ICONSTOP "${PRODUCT} needs 64-bit Windows 10 or later." /SD IDOK
    SetErrorLevel 1
    Quit
  ${EndIf}
  UserInfo::GetAccountType
  Pop $0
  ${If} $0 != "Admin"
    MessageBox MB_ICONSTOP "Run this program as Administrator: it manages the ${PRODUCT} service, the tunnel adapter and DNS." /SD IDOK
    SetErrorLevel ${EXIT_NOT_ADMIN}
    Quit
  ${EndIf}
FunctionEnd
!macroend
!insertmacro DefineHelpers ""
!insertmacro DefineHelpers "un."

; ---------------------------------------------------------------------------------------
; Installer

; The value of option OPT (e.g. "/PASSWORD=", matched without regard to case) in the
; command-line parameters PARAMS, "" when absent. Accepts /OPT=value, /OPT="value with
; spaces" and "/OPT=value with spaces" (how CreateProcess-style quoting, e.g. PowerShell's,
; passes an argument with spaces). A value cannot contain a double quote.
!macro GetArg PARAMS OPT RESULT
  Push `${PARAMS}`
  Push `${OPT}`
  Call GetArg
  Pop ${RESULT}
!macroend

Function GetArg
  Exch $1 ; option
  Exch
  Exch $0 ; parameters
  Push $2 ; position
  Push $3 ; length of the option
  Push $4 ; scratch
  Push $5 ; result
  Push $6 ; the character ending the value: " or space
  Push $7 ; length of the parameters
  StrLen $3 $1
  StrLen $7 $0
  StrCpy $5 ""
  StrCpy $2 0
  ${Do}
    ${If} $2 >= $7
      ${Break}
    ${EndIf}
    StrCpy $4 $0 $3 $2
    ${If} $4 == $1
      ; At the start, after a space, or after the quote that opens the argument.
      StrCpy $6 ""
      ${If} $2 == 0
        StrCpy $6 " "
      ${Else}
        IntOp $4 $2 - 1
        StrCpy $4 $0 1 $4
        ${If} $4 == " "
          StrCpy $6 " "
        ${ElseIf} $4 == '"'
          StrCpy $6 '"'
        ${EndIf}
      ${EndIf}
      ${If} $6 != ""
        IntOp $2 $2 + $3
        StrCpy $4 $0 1 $2
        ${If} $6 == " "
        ${AndIf} $4 == '"'
          StrCpy $6 '"'
          IntOp $2 $2 + 1
        ${EndIf}
        ${Do}
          ${If} $2 >= $7
            ${Break}
          ${EndIf}
          StrCpy $4 $0 1 $2
          ${If} $4 == $6
            ${Break}
          ${EndIf}
          StrCpy $5 "$5$4"
          IntOp $2 $2 + 1
        ${Loop}
        ${Break}
      ${EndIf}
    ${EndIf}
    IntOp $2 $2 + 1
  ${Loop}
  StrCpy $0 $5
  Pop $7
  Pop $6
  Pop $5
  Pop $4
  Pop $3
  Pop $2
  Pop $1
  Exch $0
FunctionEnd

Function .onInit
  SetRegView 64
  SetShellVarContext all
  Call RequireAdmin
  ${IfNot} ${AtLeastWin10}
    MessageBox MB_ICONSTOP "${PRODUCT} needs Windows 10 or later." /SD IDOK
    SetErrorLevel 1
    Quit
  ${EndIf}
  StrCpy $DataDir "$APPDATA\cyphonic"

  ${GetParameters} $R0
  !insertmacro GetArg $R0 "/DEVICEID=" $DeviceId
  !insertmacro GetArg $R0 "/PASSWORD=" $Password
  !insertmacro GetArg $R0 "/CLOUDAS=" $CloudAs
  !insertmacro GetArg $R0 "/CLOUDNMS=" $CloudNms
  !insertmacro GetArg $R0 "/CLOUDKEY=" $CloudKey
  StrCpy $CmdLineSafe "$CMDLINE"
  ${If} $Password != ""
    ${WordReplace} "$CmdLineSafe" "/PASSWORD=$Password" "/PASSWORD=********" "+" $CmdLineSafe
    ${WordReplace} "$CmdLineSafe" '/PASSWORD="$Password"' "/PASSWORD=********" "+" $CmdLineSafe
  ${EndIf}

  ; Upgrade in place: the previous installation's directory wins over /D= and the page.
  StrCpy $Upgrade 0
  ClearErrors
  ReadRegStr $0 HKLM "${UNINST_KEY}" "InstallLocation"
  ${IfNot} ${Errors}
  ${AndIf} $0 != ""
  ${AndIf} ${FileExists} "$0\cyphonicd.exe"
    StrCpy $INSTDIR $0
    StrCpy $Upgrade 1
  ${EndIf}
FunctionEnd

Function SkipOnUpgrade
  ${If} $Upgrade == 1
    Abort
  ${EndIf}
FunctionEnd

Section "CYPHONIC" SecMain
  SectionIn RO
  SetRegView 64
  SetShellVarContext all
  InitPluginsDir
  Push "$PLUGINSDIR\install.log"
  Call OpenLog
  ${If} $Upgrade == 1
    ${Log} "upgrading the installation in $INSTDIR"
  ${Else}
    ${Log} "installing into $INSTDIR"
  ${EndIf}

  ; 1. Stop a running node so its binaries can be replaced.
  ${If} ${FileExists} "$INSTDIR\cyphonicd.exe"
    ${Exec} "stopping the service" '"$INSTDIR\cyphonicd.exe" service stop'
  ${Else}
    ClearErrors
    ReadRegStr $0 HKLM "${SERVICE_KEY}" "ImagePath"
    ${IfNot} ${Errors}
      ${Exec} "stopping the service" '"$SYSDIR\sc.exe" stop cyphonic'
    ${EndIf}
  ${EndIf}
  Call WaitUntilReplaceable

  ; 2. Binaries and plugins (the signed wintun.dll next to cyphonic_wintun.dll).
  SetOverwrite on
  SetOutPath "$INSTDIR"
  Call SecureInstallDir
  File "${PAYLOAD}\cyphonicd.exe"
  File "${PAYLOAD}\cyphonic.exe"
  SetOutPath "$INSTDIR\plugins"
  File "${PAYLOAD}\plugins\cyphonic_wintun.dll"
  File "${PAYLOAD}\plugins\wintun.dll"
  File "${PAYLOAD}\plugins\cyphonic_win_mobility.dll"
  File "${PAYLOAD}\plugins\cyphonic_aes_gcm.dll"
  File "${PAYLOAD}\plugins\cyphonic_chacha20_poly1305.dll"
  File "${PAYLOAD}\plugins\cyphonic_ctr_hmac.dll"
  ; Pristine copies, replaced by every upgrade, to compare an edited configuration with.
  SetOutPath "$INSTDIR\defaults"
  File "/oname=node.yaml.in" "${PAYLOAD}\node.yaml.in"
  File "${PAYLOAD}\scripts\dns_filter.lua"
  File "${PAYLOAD}\scripts\config.lua"
  SetOutPath "$INSTDIR"
  WriteUninstaller "$INSTDIR\uninstall.exe"
  ${Log} "installed the binaries and plugins"

  ; 3. Register the service. This also creates %ProgramData%\cyphonic restricted to SYSTEM
  ;    and Administrators (inherited by everything written into it below).
  ${Exec} "registering the service" '"$INSTDIR\cyphonicd.exe" service install --config "$DataDir\node.yaml"'
  ${If} $0 != 0
    MessageBox MB_ICONSTOP "Registering the ${PRODUCT} service failed:$\r$\n$1" /SD IDOK
    Abort "registering the service failed"
  ${EndIf}

  ; 4. Configuration and scripts: written once, never overwritten by an upgrade.
  SetOverwrite off
  SetOutPath "$DataDir"
  File "${PAYLOAD}\scripts\dns_filter.lua"
  File "${PAYLOAD}\scripts\config.lua"
  SetOverwrite on
  ${If} ${FileExists} "$DataDir\node.yaml"
    ${Log} "kept the existing $DataDir\node.yaml"
    ${If} "$CloudAs$CloudNms$CloudKey" != ""
      ${Log} "  /CLOUDAS, /CLOUDNMS and /CLOUDKEY apply to a new node.yaml only: ignored"
    ${EndIf}
  ${Else}
    Call WriteNodeConfig
  ${EndIf}
  ${Exec} "checking the configuration" '"$INSTDIR\cyphonic.exe" check-config "$DataDir\node.yaml"'

  ; 5. Firewall: peers reach the node's UDP port directly (NAT traversal, direct paths).
  ${Exec} "firewall" '"$SYSDIR\netsh.exe" advfirewall firewall delete rule name="${FIREWALL_RULE}"'
  ${Exec} "firewall" '"$SYSDIR\netsh.exe" advfirewall firewall add rule name="${FIREWALL_RULE}" dir=in action=allow program="$INSTDIR\cyphonicd.exe" protocol=UDP profile=any enable=yes'

  ; 6. Optional unattended login, then start the node.
  Call Login
  ${Exec} "starting the service" '"$INSTDIR\cyphonicd.exe" service start'
  ${If} $0 == 0
    StrCpy $ServiceResult "ok"
  ${Else}
    StrCpy $ServiceResult "failed"
  ${EndIf}

  ; 7. Start-menu shortcut, run as administrator (the control pipe is for Administrators).
  SetOutPath "$INSTDIR"
  CreateShortCut "$SMPROGRAMS\CYPHONIC.lnk" "$INSTDIR\cyphonic.exe" 'ui --config "$DataDir\node.yaml"' "$INSTDIR\cyphonic.exe" 0 SW_SHOWNORMAL "" "Open the CYPHONIC starter page"
  Push "$SMPROGRAMS\CYPHONIC.lnk"
  Call MarkRunAsAdmin

  ; 8. Add/Remove Programs.
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayName" "${PRODUCT}"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINST_KEY}" "Publisher" "${PUBLISHER}"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayIcon" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegStr HKLM "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoRepair" 1
  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  WriteRegDWORD HKLM "${UNINST_KEY}" "EstimatedSize" "$0"

  ; 9. Outcome, in the log and the exit code.
  ${If} $LoginResult == "failed"
    ${Log} "result: installed; the login FAILED (log in on the starter page or with cyphonic login)"
    SetErrorLevel ${EXIT_LOGIN_FAILED}
  ${ElseIf} $ServiceResult == "failed"
    ${Log} "result: installed; the service did NOT start (see above)"
    SetErrorLevel ${EXIT_SERVICE_NOT_STARTED}
  ${Else}
    ${Log} "result: installed"
  ${EndIf}
  Call SaveLog
SectionEnd

Function .onInstFailed
  ${Log} "result: installation FAILED"
  Call SaveLog
FunctionEnd

; Keeps the log as %ProgramData%\cyphonic\install.log (SYSTEM and Administrators only).
Function SaveLog
  Call CloseLog
  ${If} ${FileExists} "$DataDir\*.*"
    CopyFiles /SILENT "$PLUGINSDIR\install.log" "$DataDir\install.log"
  ${EndIf}
FunctionEnd

; The LocalSystem service runs cyphonicd.exe and loads the plugins from $INSTDIR: nobody
; but SYSTEM and Administrators may change them. Under Program Files that is inherited; a
; folder elsewhere (e.g. C:\CYPHONIC, where Users may modify new subfolders) gets its own
; protected ACL: SYSTEM and Administrators full control, Users read and execute.
Function SecureInstallDir
  StrLen $0 "$PROGRAMFILES64\"
  StrCpy $1 "$INSTDIR\" $0
  ${If} $1 == "$PROGRAMFILES64\"
    Return
  ${EndIf}
  ${Exec} "restricting $INSTDIR" '"$SYSDIR\icacls.exe" "$INSTDIR" /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F *S-1-5-32-544:(OI)(CI)F *S-1-5-32-545:(OI)(CI)RX'
  ${If} $0 != 0
    MessageBox MB_ICONSTOP "Could not restrict the access rights of $INSTDIR:$\r$\n$1$\r$\nInstall into $PROGRAMFILES64 instead." /SD IDOK
    Abort "restricting $INSTDIR failed"
  ${EndIf}
FunctionEnd

; Waits (up to 15 s) until cyphonicd.exe can be opened for writing: the service process
; may exit a moment after reporting Stopped.
Function WaitUntilReplaceable
  ${IfNot} ${FileExists} "$INSTDIR\cyphonicd.exe"
    Return
  ${EndIf}
  StrCpy $2 0
  ${Do}
    ClearErrors
    FileOpen $3 "$INSTDIR\cyphonicd.exe" a
    ${IfNot} ${Errors}
      FileClose $3
      Return
    ${EndIf}
    IntOp $2 $2 + 1
    ${If} $2 >= 30
      ${Log} "cyphonicd.exe is still in use: the upgrade may ask to retry"
      Return
    ${EndIf}
    Sleep 500
  ${Loop}
FunctionEnd

; Renders node.yaml.in into $DataDir\node.yaml (UTF-8, CRLF): plugin paths into this
; installation, the cloud from /CLOUDAS= /CLOUDNMS= /CLOUDKEY= or the placeholders.
Function WriteNodeConfig
  ${If} $CloudAs == ""
    StrCpy $CloudAs "${DEFAULT_CLOUD_AS}"
  ${EndIf}
  ${If} $CloudNms == ""
    StrCpy $CloudNms "${DEFAULT_CLOUD_NMS}"
  ${EndIf}
  ${If} $CloudKey == ""
    StrCpy $CloudKey "${DEFAULT_CLOUD_KEY}"
  ${EndIf}
  ; Values go into single-quoted YAML strings: a quote is written twice.
  ${WordReplace} "$INSTDIR\plugins" "'" "''" "+" $R1
  ${WordReplace} "$CloudAs" "'" "''" "+" $R2
  ${WordReplace} "$CloudNms" "'" "''" "+" $R3
  ${WordReplace} "$CloudKey" "'" "''" "+" $R4
  File "/oname=$PLUGINSDIR\node.yaml.in" "${PAYLOAD}\node.yaml.in"
  FileOpen $R5 "$PLUGINSDIR\node.yaml.in" r
  FileOpen $R8 "$DataDir\node.yaml" w
  ${Do}
    ClearErrors
    FileRead $R5 $R6
    ${If} ${Errors}
      ${Break}
    ${EndIf}
    ${TrimNewLines} "$R6" $R6
    ${WordReplace} "$R6" "@PLUGIN_DIR@" "$R1" "+" $R6
    ${WordReplace} "$R6" "@CLOUD_AS@" "$R2" "+" $R6
    ${WordReplace} "$R6" "@CLOUD_NMS@" "$R3" "+" $R6
    ${WordReplace} "$R6" "@CLOUD_KEY@" "$R4" "+" $R6
    Push "$R6$\r$\n"
    Call WriteUtf8
  ${Loop}
  FileClose $R8
  FileClose $R5
  ${Log} "wrote $DataDir\node.yaml (cloud: AS $CloudAs, NMS $CloudNms)"
FunctionEnd

; /DEVICEID= and /PASSWORD=: `cyphonic login --device-id ID --password-stdin`. NSIS cannot
; pipe into a program, so the password goes through a file in %ProgramData%\cyphonic
; (SYSTEM and Administrators only, like the credential it is exchanged for) that cmd.exe
; redirects into the login and that is deleted right after.
Function Login
  StrCpy $LoginResult ""
  ${If} $DeviceId == ""
    ${If} $Password != ""
      ${Log} "/PASSWORD without /DEVICEID: no login"
    ${EndIf}
    Return
  ${EndIf}
  StrCpy $LoginResult "failed"
  ${If} $Password == ""
    ${Log} "login: /DEVICEID without /PASSWORD: no login"
    Return
  ${EndIf}
  ; cmd.exe would expand % and end the quoted argument at ".
  ${WordReplace} "$DeviceId" '"' "" "+" $0
  ${WordReplace} "$0" "%" "" "+" $0
  ${If} $0 != $DeviceId
    ${Log} "login: a device ID with a double quote or % cannot be passed through cmd.exe"
    Return
  ${EndIf}
  ClearErrors
  StrCpy $R0 "$DataDir\login-password.tmp"
  FileOpen $R8 "$R0" w
  ${If} ${Errors}
    ${Log} "login: cannot write $R0"
    Return
  ${EndIf}
  Push "$Password$\n"
  Call WriteUtf8
  FileClose $R8
  ${Exec} "login" '"$SYSDIR\cmd.exe" /D /S /C ""$INSTDIR\cyphonic.exe" --config "$DataDir\node.yaml" login --device-id "$DeviceId" --password-stdin < "$R0""'
  Delete "$R0"
  StrCpy $Password ""
  ${If} ${FileExists} "$R0"
    ${Log} "login: could not delete $R0: delete it by hand"
  ${EndIf}
  ${If} $0 == 0
    StrCpy $LoginResult "ok"
    ${Log} "login: ok ($DeviceId)"
  ${Else}
    ${Log} "login: FAILED for device $DeviceId"
    MessageBox MB_ICONEXCLAMATION "Logging in as $DeviceId failed:$\r$\n$1$\r$\nLog in later on the starter page (Start menu: CYPHONIC)." /SD IDOK
  ${EndIf}
FunctionEnd

; Sets the "run as administrator" flag of a .lnk: SLDF_RUNAS_USER, bit 0x2000 of the
; LinkFlags at offset 0x14, i.e. bit 0x20 of byte 0x15.
Function MarkRunAsAdmin
  Exch $R0
  Push $R1
  Push $R2
  ClearErrors
  FileOpen $R1 "$R0" a
  ${If} ${Errors}
    ${Log} "cannot open $R0 to mark it run-as-administrator"
  ${Else}
    FileSeek $R1 0x15 SET
    FileReadByte $R1 $R2
    IntOp $R2 $R2 | 0x20
    FileSeek $R1 0x15 SET
    FileWriteByte $R1 $R2
    FileClose $R1
    ${Log} "created the shortcut $R0 (run as administrator)"
  ${EndIf}
  Pop $R2
  Pop $R1
  Pop $R0
FunctionEnd

; Finish page: asks the service for a one-time starter-page link and opens it through
; explorer.exe, so that the browser runs as the logged-on user, not elevated like us.
Function OpenStarterPage
  StrCpy $2 0
  ${Do}
    nsExec::ExecToStack /TIMEOUT=${EXEC_TIMEOUT} '"$INSTDIR\cyphonic.exe" --config "$DataDir\node.yaml" ui --print-url'
    Pop $0
    Pop $1
    ${If} $0 == 0
      ${TrimNewLines} "$1" $1
      Exec '"$WINDIR\explorer.exe" "$1"'
      Return
    ${EndIf}
    IntOp $2 $2 + 1
    ${If} $2 >= 10
      MessageBox MB_ICONEXCLAMATION "The starter page is not available yet:$\r$\n$1$\r$\nTry the Start-menu entry CYPHONIC in a moment." /SD IDOK
      Return
    ${EndIf}
    Sleep 1000
  ${Loop}
FunctionEnd

; ---------------------------------------------------------------------------------------
; Uninstaller

Function un.onInit
  SetRegView 64
  SetShellVarContext all
  Call un.RequireAdmin
  StrCpy $DataDir "$APPDATA\cyphonic"
  StrCpy $Purge 0
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/PURGE" $0
  ${IfNot} ${Errors}
    StrCpy $Purge 1
  ${EndIf}
  StrCpy $CmdLineSafe "$CMDLINE"
FunctionEnd

Section "Uninstall"
  SetRegView 64
  SetShellVarContext all
  Push "$TEMP\cyphonic-uninstall.log"
  Call un.OpenLog
  ${Log} "uninstalling from $INSTDIR"

  ; The node removes its NRPT rule and adapter when it stops.
  ${If} ${FileExists} "$INSTDIR\cyphonicd.exe"
    ${Exec} "stopping the service" '"$INSTDIR\cyphonicd.exe" service stop'
    ${Exec} "removing the service" '"$INSTDIR\cyphonicd.exe" service uninstall'
  ${EndIf}
  ClearErrors
  ReadRegStr $0 HKLM "${SERVICE_KEY}" "ImagePath"
  ${IfNot} ${Errors}
    ${Exec} "stopping the service" '"$SYSDIR\sc.exe" stop cyphonic'
    ${Exec} "removing the service" '"$SYSDIR\sc.exe" delete cyphonic'
  ${EndIf}

  ; A node that crashed may have left its NRPT rule behind.
  ClearErrors
  EnumRegValue $0 HKLM "${NRPT_KEY}" 0
  StrCpy $2 1
  ${If} ${Errors}
    StrCpy $2 0
  ${EndIf}
  DeleteRegKey HKLM "${NRPT_KEY}"
  ${If} $2 == 1
    ${Log} "removed a leftover NRPT rule"
    ${Exec} "flushing the DNS cache" '"$SYSDIR\ipconfig.exe" /flushdns'
  ${EndIf}
  ${Exec} "firewall" '"$SYSDIR\netsh.exe" advfirewall firewall delete rule name="${FIREWALL_RULE}"'

  Delete /REBOOTOK "$INSTDIR\cyphonicd.exe"
  Delete /REBOOTOK "$INSTDIR\cyphonic.exe"
  Delete /REBOOTOK "$INSTDIR\plugins\cyphonic_wintun.dll"
  Delete /REBOOTOK "$INSTDIR\plugins\wintun.dll"
  Delete /REBOOTOK "$INSTDIR\plugins\cyphonic_win_mobility.dll"
  Delete /REBOOTOK "$INSTDIR\plugins\cyphonic_aes_gcm.dll"
  Delete /REBOOTOK "$INSTDIR\plugins\cyphonic_chacha20_poly1305.dll"
  Delete /REBOOTOK "$INSTDIR\plugins\cyphonic_ctr_hmac.dll"
  Delete "$INSTDIR\defaults\node.yaml.in"
  Delete "$INSTDIR\defaults\dns_filter.lua"
  Delete "$INSTDIR\defaults\config.lua"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR\plugins"
  RMDir "$INSTDIR\defaults"
  RMDir /REBOOTOK "$INSTDIR"
  Delete "$SMPROGRAMS\CYPHONIC.lnk"
  DeleteRegKey HKLM "${UNINST_KEY}"
  ${Log} "removed the program files, the shortcut and the uninstall entry"

  ; Silent: keep, unless /PURGE.
  StrCpy $0 keep
  ${If} $Purge == 1
    StrCpy $0 purge
  ${ElseIf} ${FileExists} "$DataDir\*.*"
    MessageBox MB_YESNO|MB_ICONQUESTION "Keep the ${PRODUCT} configuration and this device's credentials ($DataDir)?$\r$\n$\r$\nYes: a later installation uses them again.$\r$\nNo: delete them." /SD IDYES IDYES +2
    StrCpy $0 purge
  ${EndIf}
  ${If} $0 == purge
    RMDir /r "$DataDir"
    ${Log} "deleted the configuration and credentials ($DataDir)"
  ${Else}
    ${Log} "kept the configuration and credentials in $DataDir"
  ${EndIf}
  ${Log} "result: uninstalled"
  Call un.CloseLog
SectionEnd
