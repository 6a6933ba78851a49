"""The console's two languages: English text is the key, Chinese its translation.

The language is the user's own choice (saved with the user), else a cookie set by the
switch on the sign-in page, else the browser's Accept-Language; Chinese by default.
Refusals from the product keep the CLI's words.
"""

from __future__ import annotations

LANGS = ("zh", "en")
LANG_COOKIE = "extbill_lang"

ZH = {
    "Sign in": "登录",
    "Sign out": "退出",
    "Login": "用户名",
    "Password": "密码",
    "Numbers": "号码",
    "Number": "号码",
    "Name": "名称",
    "Status": "状态",
    "Account": "账户",
    "Main account": "主账户",
    "Extension": "分机",
    "Extensions": "分机",
    "Balance": "余额",
    "Reserved": "预留",
    "Available": "可用",
    "Spent": "已消费",
    "active": "正常",
    "suspended": "已停机",
    "arrears": "欠费",
    "low": "余额不足",
    "ok": "正常",
    "IVR": "IVR语音导航",
    "Extension billing": "分机计费",
    "on": "开",
    "off": "关",
    "Save": "保存",
    "Settings": "设置",
    "Minimum balance": "最低余额",
    "Recharge": "充值",
    "Recharge main account": "主账户充值",
    "Recharge an extension": "分机充值",
    "Transfer main to extension": "主账户转入分机",
    "Amount": "金额",
    "Transfer": "转账",
    "Calls in progress": "进行中的通话",
    "No calls in progress.": "当前没有通话。",
    "Caller": "主叫",
    "Started": "开始",
    "Answered": "接通",
    "Granted s": "授权秒数",
    "Audit log": "操作日志",
    "When": "时间",
    "Who": "操作人",
    "Role": "角色",
    "Address": "地址",
    "What": "操作",
    "Before": "之前",
    "After": "之后",
    "Idempotency key": "幂等键",
    "Calls": "通话记录",
    "From": "开始日期",
    "To": "结束日期",
    "State": "状态",
    "any": "全部",
    "Filter": "筛选",
    "Export CSV": "导出CSV",
    "Next page": "下一页",
    "First page": "第一页",
    "Older entries": "更早的记录",
    "Newest entries": "最新记录",
    "Main account statement": "主账户账单",
    "Statement": "账单",
    "Effect": "变动",
    "Reference": "参考号",
    "Spend per day, last 30 days": "近30天每日消费",
    "Low-balance threshold": "余额提醒阈值",
    "default": "默认",
    "Talk s": "通话秒数",
    "Billed s": "计费秒数",
    "Cost": "费用",
    "End": "结束",
    "No calls match.": "没有符合条件的通话。",
    "Back to the number": "返回号码",
    "Language": "语言",
    "Not found": "未找到",
    "Refused": "操作被拒绝",
    "Done": "完成",
    "Signed in as": "当前用户",
    "this form was already submitted; nothing changed": "此表单已提交过;未做任何更改",
    "Sign-in failed: wrong login or password, or too many attempts. Wait a few minutes and try again.": (
        "登录失败:用户名或密码错误,或尝试次数过多。请稍后再试。"
    ),
    "more": "更多",
    "recharged": "充值成功",
    "transferred": "转账成功",
    "saved": "已保存",
    "Console": "管理后台",
    "Back": "返回",
    "removed": "已删除",
    "Removed on": "删除于",
    "Removed extensions": "已删除的分机",
    "its money went back to the main account; its history stays readable.": "余额已退回主账户;历史记录仍可查看。",
    "the main balance is below the minimum balance of": "主账户余额低于最低余额",
    "Monthly minimum": "月最低消费",
    "none": "无",
    "Owed": "欠缴",
    "Months close in": "月结时区",
    "Reclaim to main": "回收到主账户",
    "Reclaim": "回收",
    "all available": "全部可用余额",
    "Money held by calls in progress is never reclaimed.": "进行中通话占用的金额不会被回收。",
    "Remove an extension": "删除分机",
    "Remove": "删除",
    "Its money goes back to the main account; its history stays readable.": "其余额退回主账户;历史记录仍可查看。",
    "Bulk recharge (CSV)": "批量充值(CSV)",
    "File": "文件",
    "key empty for the main account; all rows or none; the same file twice changes nothing": (
        "key留空表示主账户;全部成功或全部不执行;同一文件重复上传不会重复充值"
    ),
    "Upload": "上传",
    "Bulk recharge refused: nothing was applied": "批量充值被拒绝:未执行任何充值",
    "Closed months": "已结算月份",
    "Month": "月份",
    "Charged": "应收",
    "Paid": "已付",
    "Still owed": "仍欠",
    "Closed": "结算",
    "No month closed yet.": "尚无已结算的月份。",
    "Notifications": "通知",
    "All": "全部",
    "Failed only": "仅失败",
    "Type": "类型",
    "Tries": "尝试次数",
    "Written": "生成时间",
    "Last error": "最近错误",
    "Retry": "重试",
    "No notifications.": "没有通知。",
}


def pick(user_lang: str | None, cookie: str | None, accept: str | None) -> str:
    for choice in (user_lang, cookie):
        if choice in LANGS:
            return choice
    accept = (accept or "").lower()
    if accept and not accept.startswith("zh") and ("en" in accept.split(",")[0]):
        return "en"
    return "zh"


def translator(lang: str):  # noqa: ANN201
    if lang == "zh":
        return lambda text: ZH.get(text, text)
    return lambda text: text
