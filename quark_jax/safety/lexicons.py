"""The phrase lists the rule-based rails match: jailbreak and injection phrasing, harmful behaviours, requests
for secrets, refusals. Patterns are regular expressions over the lower-cased, accent-free views of
:mod:`quark_jax.safety.normalize`, written per category (what a request of that kind must say), not per
example: the red-team suite is checked against them, never the other way round.
"""

from __future__ import annotations

import re

# ---- jailbreak and prompt injection ------------------------------------------------------------------------
_PRIOR = r"(?:all |any |the |your |my |these |those |every )*(?:previous|prior|preceding|above|earlier|former|original|initial|system|existing|old)"
_RULES = r"(?:instructions?|rules?|prompts?|directions?|guidelines?|directives?|commands?|constraints?|restrictions?|polic(?:y|ies)|programming|context|messages?)"

JAILBREAK = {
    "override": [
        rf"\b(?:ignore|disregard|forget|override|overrule|skip|drop|abandon|bypass|neglect|discard)\b[\w\s,'-]{{0,20}}?{_PRIOR}\b[\w\s-]{{0,20}}?\b{_RULES}",
        r"\b(?:ignore|disregard|forget)\s+(?:all|everything|anything)\b[\w\s,'-]{0,30}\b(?:told|said|instructed|above|before)",
        rf"\b(?:ignore|disregard|forget|bypass)\s+(?:your|the|all)\s+(?:safety|content|ethical|moral)?\s*{_RULES}",
        r"\bnew (?:instructions?|rules?|system prompt)\s*[:\-]",
        r"\bfrom now on,? you (?:will|must|are|shall|should|have to)\b",
        r"\byou (?:are|have been) (?:now )?(?:freed|released|liberated|unlocked|jailbroken)",
    ],
    "persona": [
        r"\b(?:you are|you're|act as|acting as|pretend (?:to be|you are|you're)|become|roleplay as|role-play as|called|named|"
        r"hi|hello|hey|dear|now)\s+(?:dan|stan|dude|aim|evil ?bot|evil ?gpt|dev ?mode gpt)\b",
        r"\bdo anything now\b",
        r"\b(?:ai|assistant|chatgpt|gpt|model|llm|chatbot)\b.{0,40}\b(?:developer|god|dan|jailbreak(?:ed)?|unrestricted|opposite) mode\b",
        r"\b(?:developer|god|dan|jailbreak(?:ed)?|unrestricted|opposite) mode\b.{0,40}\b(?:ai|assistant|chatgpt|gpt|model|llm|chatbot)\b",
        r"\byou (?:are|'re) (?:now )?in (?:developer|god|dan|jailbreak(?:ed)?|unrestricted) mode\b",
        r"\b(?:you are|you're|act as|pretend (?:to be|you are|you're)|roleplay as|role-play as|play the role of|simulate|become)\b[\w\s,'-]{0,60}\b(?:no|without|free of|free from|zero)\s+(?:restrictions?|rules?|limits?|limitations?|filters?|guidelines?|ethics|morals?|censorship|boundaries|safety)",
        r"\byou (?:have|got) no (?:restrictions?|rules?|limits?|filters?|guidelines?|ethics|morals?)\b",
        r"\b(?:unrestricted|unfiltered|uncensored|amoral|unethical|unbound|unaligned|evil)\s+(?:ai|assistant|model|chatbot|bot|version|mode|persona|character)\b",
        r"\bstay in character\b",
        r"\byou (?:will |must |shall |should |can )?(?:never|not|no longer) (?:refuse|decline|say no|reject)\b",
        r"\b(?:never|don't|do not) (?:refuse|decline) (?:any|a|my|this) (?:request|question|prompt|instruction)",
        r"\b(?:without|no)\s+(?:any\s+)?(?:disclaimers?|moralizing|moralising|lectures?|ethical (?:warnings?|considerations)|safety warnings?)\b",
        r"\b(?:grandma|grandmother|granny|late (?:mother|father|grandfather))\b.{0,120}\b(?:used to|would)\s+(?:tell|read|explain|say|recite|teach)",
        r"\b(?:in a|for a|for my|write a) (?:story|novel|movie|film|play|screenplay|game)\b.{0,120}\b(?:real|exact|precise|actual|working)\s+(?:step[- ]by[- ]step\s+)?(?:instructions?|steps|recipe|method|procedure|guide|quantities|code)",
        r"\b(?:bypass|evade|disable|turn off|switch off|get around|circumvent)\b[\w\s'-]{0,20}\b(?:safety|content|your)\s*(?:filters?|guardrails?|restrictions?|rules?|guidelines?|policies|alignment|moderation)",
    ],
    "encoding": [
        r"\b(?:decode|decrypt|translate|convert|interpret)\b[\w\s,'-]{0,40}\b(?:and|then)\s+(?:follow|obey|execute|do|carry out|answer|act on|respond to|comply)",
        r"\b(?:answer|respond|reply|write)\s+(?:only\s+)?in\s+(?:base64|hex|rot13|rot-13|leetspeak|leet|binary|morse|cipher)",
        r"\b(?:base64|rot13|rot-13|hex|morse)[- ](?:encoded|decoded)?\s*(?:instructions?|request|message|prompt|question)\b",
    ],
    # Code aimed at a tool's evaluator or file reader rather than at the question: Python's object-model escape
    # hatches (the classic sandbox escapes) and paths that climb out of a directory.
    "sandbox_escape": [
        r"__(?:import|subclasses|globals|builtins|class|bases|mro|code|getattribute|dict|reduce|init)__",
        r"(?:\.\.[/\\]){2,}|(?:^|[\s'\"=(])/etc/(?:passwd|shadow|sudoers)|~/\.ssh/|\.\.%2f|%2e%2e[/%]",
    ],
    "exfiltration": [
        r"\b(?:reveal|print|show|repeat|output|display|leak|tell me|give me|dump|recite|spell out)\b[\w\s,'-]{0,30}\b(?:system prompt|hidden prompt|initial prompt|instructions above|your (?:instructions|prompt|rules|configuration))",
    ],
}

# The same override in other languages (the "translation" wrappers), matched on the accent-free view.
MULTILINGUAL_OVERRIDE = [
    # French
    r"\bignore[rz]?\b.{0,30}\b(?:instructions?|consignes?|regles?)\b.{0,20}\b(?:precedentes?|anterieures?|ci-dessus)",
    r"\boublie[rz]?\b.{0,20}\b(?:instructions?|consignes?|regles?)",
    r"\b(?:sans|aucune?)\s+(?:restrictions?|limites?|regles?|filtres?)\b",
    # Spanish / Portuguese / Italian
    r"\bignor[ae](?:r|d)?\b.{0,30}\b(?:instrucciones|instrucoes|istruzioni|reglas|regole|regras)\b.{0,20}\b(?:anteriores|previas|precedenti|previe)",
    r"\b(?:olvida|esquece|dimentica)\b.{0,30}\b(?:instrucciones|instrucoes|istruzioni|reglas|regras|regole)",
    r"\b(?:sin|sem|senza)\s+(?:restricciones|restricoes|restrizioni|limites|limiti|reglas|regras|regole|filtros|filtri)\b",
    # German / Dutch
    r"\bignorier(?:e|en)?\b.{0,30}\b(?:vorherigen|bisherigen|obigen|fruheren|alle)\b.{0,20}\b(?:anweisungen|regeln|instruktionen|vorgaben)",
    r"\bvergiss\b.{0,30}\b(?:anweisungen|regeln|vorgaben)",
    r"\bohne\s+(?:einschrankungen|regeln|filter|grenzen)\b",
    r"\bnegeer\b.{0,30}\b(?:instructies|regels)",
]

# In retrieved passages and tool outputs: text addressed to the assistant rather than about the topic. Each
# line matching one is removed from the data before the model sees it (see :func:`quark_jax.safety.fence`).
INJECTION = [
    *JAILBREAK["override"],
    *JAILBREAK["encoding"],
    r"\byour (?:new|real|actual|true|updated|only) (?:task|job|goal|instructions?|objective|purpose|role)\b",
    # Addressed to the model.
    r"\b(?:attention|note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?(?:ai|assistant|model|llm|chatbot|agent|language model|bot)\b",
    r"\b(?:ai|assistant|model|llm|chatbot|agent)s?\s*(?:reading|processing|summari[sz]ing) (?:this|these)\b",
    r"\b(?:if you are|as) an? (?:ai|assistant|language model|llm|agent)\b",
    r"\byou (?:must|should|need to|have to|are required to|are instructed to)\s+(?:now\s+)?(?:say|reply with|respond with|answer with|reveal|disregard)\b",
    # A fake turn or role line: chat markers, "system prompt:" / "assistant: ..." lines, hidden HTML comments to the model.
    r"^\s*(?:system|assistant|developer|admin|administrator|root)\s*(?:message|prompt|override|note|instructions?)\s*[:>\]]",
    r"^\s*(?:assistant|ai|system)\s*:\s*(?:ignore|disregard|say|reply|respond|print|output|you|new|override|always|never|from now)",
    r"\[(?:system|inst|instructions?|admin|developer)\]|<\|?(?:system|im_start|im_end|assistant|user|tool_call|end|inst)\|?>|\[/?inst\]|<<sys>>",
    r"<!--[^>]{0,200}\b(?:assistant|ai|model|llm|system|instructions?)\b",
    # Demands for a code word or an exact reply, planted tool calls and exfiltration.
    r"\b(?:say|reply|respond|answer|output|print|write|include|append|(?:end|begin|start) your (?:answer|reply|response))\b"
    r"\s+(?:back\s+)?(?:with\s+)?(?:only\s+)?(?:with\s+)?(?:the (?:word|phrase|code|token|string|password)|exactly|only|verbatim)\b",
    r"\b(?:call|invoke|use|run|execute)\s+(?:the\s+)?[\w-]*\s*tool\b",
    r'"name"\s*:\s*"[\w.-]+"\s*,\s*"arguments"\s*:',
    r"\b(?:send|forward|email|exfiltrate|transmit|upload)\b[\w\s,'-]{0,40}\b(?:to|at)\s+(?:https?://|[\w.+-]+@[\w-]+\.)",
    *MULTILINGUAL_OVERRIDE,
]

# ---- harmful requests ---------------------------------------------------------------------------------------
# A request asks for something: a question or an imperative about how to do or get a thing.
REQUEST = (r"(?:\bhow\b|\bsteps?\b|\bstep[- ]by[- ]step\b|\binstructions?\b|\bguide\b|\btutorial\b|\brecipe\b|"
           r"\bexplain\b|\bteach\b|\bshow me\b|\btell me\b|\bgive me\b|\bwrite\b|\bcreate\b|\bmake\b|\bbuild\b|"
           r"\bcode\b|\bscript\b|\bhelp me\b|\bways? to\b|\bi want to\b|\bi need to\b|\bi'm going to\b|"
           r"\bbest way\b|\beasiest way\b|\bmethod\b|\bprocedure\b|\bdetails?\b|\bcan you\b|\bcould you\b|"
           r"\bplease\b|\bsynthesi[sz]e\b|\bprovide\b|\bdescribe\b|\blist\b|\bwhat (?:do|would|should) i\b|"
           # French, Spanish, Portuguese, Italian, German
           r"\bcomment\b|\bcomo\b|\bcome\b|\bwie\b|\bexplique|\bexplica|\bspiega|\berklar|\bdonne|\bdame\b|"
           r"\bdammi\b|\bgib mir\b|\bfabriquer\b|\bfabricar\b|\bfabbricare\b|\bherstellen\b|\bbauen\b|\bhacer\b|"
           r"\bfazer\b|\bfaire\b|\bcreer\b|\bcrear\b|\bcriar\b|\bschreib|\becri[rst]|\bescrib|\bescrev|\bscriv|"
           r"\betapes?\b|\bpasos\b|\bpassos\b|\bpassi\b|\bschritte?\b|\banleitung\b|\bistruzioni\b|\binstrucciones\b)")

_FABRICATE = (r"(?:make|making|build|building|create|creating|assemble|manufacture|3d[- ]?print|craft|construct|machine|"
              r"write|writing|code|coding|develop|program|deploy|spread|release)")
_MAKE = (r"(?:make|making|build|building|create|creating|produce|producing|synthesi[sz]e|synthesi[sz]ing|cook|cooking|"
         r"manufacture|assemble|brew|extract|prepare|construct|craft|weaponi[sz]e|3d[- ]?print|obtain|acquire|"
         r"get|buy|order|write|code|develop|program|deploy|spread|release|plant|detonate|set off|grow|refine|print)")

HARMFUL = {
    "explosives": [
        r"\b(?:pipe|nail|car|letter|fertili[sz]er|pressure[- ]cooker|suicide|dirty|homemade|home-made)\s*bombs?\b",
        rf"\b{_MAKE}\b[\w\s,'-]{{0,30}}\b(?:bombs?|explosives?|ieds?|detonators?|grenades?|napalm|molotov|tatp|hmtd|semtex|c-?4|dynamite)\b(?![- ]?proof)",
        r"\b(?:bombs?|explosives?|ieds?|detonators?|napalm|tatp)\b[\w\s,'-]{0,30}\b(?:recipe|instructions|step[- ]by[- ]step|at home|from household)",
        r"\b(?:bombe|bomba|sprengstoff|sprengsatz|explosif|explosivo|esplosivo|rohrbombe)s?\b",
    ],
    "chemical_biological": [
        r"\b(?:nerve (?:agent|gas)|sarin|soman|tabun|vx gas|novichok|ricin|abrin|anthrax|botulinum|mustard gas|phosgene|"
        r"chemical weapons?|biological weapons?|bio-?weapons?|weaponi[sz]ed? (?:virus|pathogen|bacteria|spores))\b",
        rf"\b{_MAKE}\b[\w\s,'-]{{0,30}}\b(?:toxic|poison(?:ous)?|lethal|deadly)\s+(?:gas|agent|toxin|chemical)",
        r"\b(?:gaz (?:sarin|moutarde)|arma(?:s)? quimica|arme chimique|chemiewaffe|nervengas|gas nervino|agente nervioso)\b",
    ],
    "drugs": [
        rf"\b{_MAKE}\b[\w\s,'-]{{0,30}}\b(?:meth(?:amphetamine)?|crystal meth|fentanyl|heroin|cocaine|crack cocaine|lsd|mdma|ecstasy|ghb|pcp|dmt)\b",
        r"\b(?:meth(?:amphetamine)?|fentanyl|heroin|cocaine|mdma)\b[\w\s,'-]{0,30}\b(?:synthesis|recipe|lab|precursors?|cook(?:ing)?)\b",
        r"\b(?:metanfetamina|methamphetamin|methamphetamine|metamfetamina|fentanilo|fentanyl|heroina|heroine|kokain|cocaina)\b",
    ],
    "weapons": [
        r"\b(?:ghost guns?|untraceable (?:guns?|firearms?|weapons?)|3d[- ]?printed (?:guns?|firearms?))\b",
        r"\b(?:convert|modify|turn)\b[\w\s,'-]{0,40}\b(?:full[- ]?auto(?:matic)?|machine gun|auto sear|bump stock)",
        rf"\b{_FABRICATE}\b[\w\s,'-]{{0,30}}\b(?:silencer|suppressor|zip gun|firearm|gun)s?\b(?![\w\s]{{0,10}}(?:game|toy|nerf|water|license|licence|safe|cabinet))",
        r"\b(?:arme a feu|arma de fuego|schusswaffe|pistola fantasma)\b",
    ],
    "malware": [
        r"\b(?:ransomware|keyloggers?|key loggers?|rootkits?|botnets?|spyware|stalkerware|infostealers?|info-stealers?|"
        r"credential stealers?|password stealers?|remote access trojans?|\brats?\b(?= that)|cryptojacker|crypto-?miner that hides)\b",
        rf"\b{_FABRICATE}\b(?:\s+[\w'-]+){{0,4}}?\s+(?:malware|trojans?|backdoors?|shellcode|ddos (?:tool|script|attack)|"
        r"malicious (?:code|script|software|macro|extension|payload)|(?:computer )?virus(?:es)? (?:that|which|to)|"
        r"worms? (?:that|which|to) (?:spread|infect|replicate)|self-replicating|(?:working |weaponi[sz]ed )?exploits? (?:for|against|that)|"
        r"zero[- ]days? (?:for|against|in)|payloads? (?:for|that|to) (?:infect|hack|exploit|steal))",
        r"\b(?:evade|bypass|avoid|hide from|undetectable by|fud)\b[\w\s,'-]{0,20}\b(?:antivirus|anti-virus|edr|defender|detection)\b",
        r"\b(?:logiciel malveillant|rancongiciel|programa malicioso|schadsoftware|trojaner|virus informatico)\b",
    ],
    "intrusion": [
        r"\b(?:hack|hacking|break|breaking|get|getting|log|sneak)\s+into\b[\w\s,'-]{0,40}\b(?:account|server|network|email|e-mail|"
        r"computer|phone|database|system|website|wifi|wi-fi|router|camera|instagram|facebook|gmail|icloud|bank)",
        r"\bhack(?:ing)?\b[\w\s,'-]{0,20}\b(?:someone|somebody|my (?:ex|boss|neighbou?r|wife|husband|girlfriend|boyfriend|teacher)|"
        r"(?:his|her|their) (?:account|phone|email)|the (?:school|company|government|bank|hospital|grading))",
        r"\b(?:crack|guess|brute[- ]?force|steal|phish|harvest|dump|sniff|intercept)\b[\w\s,'-]{0,30}\b(?:passwords?|credentials?|logins?|"
        r"2fa|otp|session cookies?|cookies|hashes|credit card (?:numbers|details)|bank details)",
        r"\b(?:bypass|get around|defeat|disable)\b[\w\s,'-]{0,20}\b(?:login|authentication|2fa|two[- ]factor|paywall protection|drm on)\b",
        r"\bsql injection (?:payload|attack)s?\b[\w\s,'-]{0,40}\b(?:dump|steal|extract|against|on (?:this|their|a live))",
        r"\b(?:phishing|spear-?phishing)\s+(?:email|e-mail|page|site|kit|campaign|message|sms|text)s?\b",
        r"\b(?:e-?mails?|courriels?|correos?|mensajes?|messages?|nachrichten|seiten?|pages?|sitios?)\s+(?:de\s+)?phishing\b|\bphishing-?(?:e-?mail|mail|seite|nachricht)",
        r"\b(?:take|knock|bring|shut)\s+down\b[\w\s,'-]{0,40}\b(?:with|using|via|through)\b[\w\s-]{0,10}\b(?:ddos|dos|syn flood|botnet|flood)",
        r"\b(?:launch|perform|run|carry out|start|do|orchestrate)\b[\w\s,'-]{0,20}\b(?:ddos|denial[- ]of[- ]service)\b",
        r"\b(?:attaque|ataque|angriff)\s+(?:ddos|par deni de service)|\bddos-?(?:angriff|attacke)",
        r"\b(?:pirater|piratear|hackear|hacken)\b",
    ],
    "fraud": [
        r"\b(?:launder|laundering)\b[\w\s,'-]{0,30}\b(?:money|cash|funds|proceeds|bitcoin|crypto)",
        r"\bmoney laundering (?:scheme|method|steps|guide)",
        r"\b(?:counterfeit|fake|forged?)\s+(?:[\w$-]+\s+){0,3}?(?:money|bills|banknotes|notes|currency)\b",
        r"\b(?:faux billets|fausse monnaie|billetes falsos|dinero falso|gefalschte\b.{0,20}\bscheine|falschgeld|banconote false)\b",
        rf"\b{_MAKE}\b[\w\s,'-]{{0,30}}\b(?:counterfeit|fake|forged?)\s+(?:money|bills|currency|ids?|passports?|driver'?s licen[cs]es?|"
        r"diplomas?|invoices?|checks?|cheques?|documents?|prescriptions?|reviews)",
        r"\b(?:commit|pull off|run|get away with)\b[\w\s,'-]{0,30}\b(?:fraud|scam|ponzi|pyramid scheme|identity theft|insurance fraud|tax evasion)",
        r"\b(?:evade|avoid paying|cheat on)\b[\w\s,'-]{0,10}\b(?:taxes|tax)\b(?! legally)",
        r"\b(?:steal|stealing|use)\b[\w\s,'-]{0,20}\b(?:someone'?s|stolen|other people'?s)\s+(?:identity|credit cards?|ssn|social security)",
        r"\b(?:blanchir|blanquear|lavar|riciclare)\b[\w\s,'-]{0,20}\b(?:argent|dinero|dinheiro|denaro)|\bgeldwasche\b",
        r"\b(?:drogengeld|schwarzgeld|geld)\b.{0,40}\bwaschen\b",
    ],
    "violence": [
        r"\b(?:kill|murder|poison|strangle|stab|shoot|drown|suffocate|assassinate|maim|torture|kidnap|abduct|beat up|hurt|harm|attack)\b"
        r"\s+(?:someone|somebody|a person|people|my (?:\w+ ){0,2}?(?:wife|husband|boss|neighbou?r|teacher|classmate|mother|father|mom|dad|"
        r"brother|sister|ex|coworker|colleague|roommate|landlord|friend|child|baby|partner|girlfriend|boyfriend|dog|cat)|"
        r"a (?:child|kid|baby|coworker|classmate|politician|cop|police officer|judge)(?!\s*(?:process|thread|task|job|node|widget|element|window|pid))|the (?:president|senator|mayor|judge)|"
        r"him|her|them|a crowd|as many)\b",
        r"\b(?:without (?:getting caught|leaving (?:a )?(?:trace|evidence|fingerprints)|anyone (?:knowing|noticing)|being detected)|"
        r"undetectable poison|untraceable poison|get away with (?:murder|it)|dispose of (?:a|the) body|hide (?:a|the) body)\b",
        r"\b(?:mass shooting|school shooting|terror(?:ist)? attack|massacre)\b[\w\s,'-]{0,40}\b(?:plan|how|carry out|commit|maximi[sz]e)",
        r"\b(?:tuer|matar|uccidere|toten|empoisonner|envenenar|avvelenare|vergiften)\b",
    ],
    "stalking_privacy": [
        r"\b(?:stalk|spy on|secretly (?:record|track|follow|monitor|watch|film))\b[\w\s,'-]{0,30}\b(?:my \w+|someone|somebody|"
        r"a person|her|him|them)\b(?![\w\s]{0,20}(?:consent|permission))",
        r"\b(?:track|follow|monitor|surveil|locate|read)\b[\w\s,'-]{0,20}\bmy (?:ex|wife|husband|girlfriend|boyfriend|partner|spouse)(?:'s)?\b"
        r"[\w\s,'-]{0,20}\b(?:phone|location|messages|texts|car|whereabouts|calls|whatsapp|email)",
        r"\b(?:without (?:their|her|his) (?:knowledge|consent|knowing)|secretly)\b[\w\s,'-]{0,40}\b(?:location|phone|messages|camera|track|read|install)",
        r"\b(?:dox|doxx|doxing|doxxing)\b",
        r"\b(?:en secret|secretement|en secreto|a escondidas|heimlich|di nascosto|em segredo)\b.{0,60}\b(?:localisation|ubicacion|"
        r"standort|telephone|telefono|handy|messages|mensajes|nachrichten|posizione|localizacao)",
        r"\b(?:find|get|look up|locate)\b[\w\s,'-]{0,30}\b(?:home address|where (?:she|he) lives|social security number|ssn)\s+(?:of|for)\b",
    ],
    "self_harm": [
        r"\b(?:kill myself|end my life|commit suicide|suicide methods?|painless (?:way|method) to die|hang myself|cut myself|"
        r"lethal dose|overdose on purpose|how much \w+ (?:would|will|to) kill)\b",
    ],
    "harassment": [
        rf"\b{_MAKE}\b[\w\s,'-]{{0,30}}\b(?:threatening|harassing|intimidating|abusive|hateful|racist|sexist)\s+(?:message|letter|email|post|text|note|comment)s?",
        r"\b(?:blackmail|extort|sextort|revenge porn|deepfake nudes?|non-?consensual)\b",
        r"\b(?:harass|bully|intimidate|threaten)\b[\w\s,'-]{0,20}\b(?:someone|my|a|her|him|them|until)\b",
    ],
}

# ---- secrets and credentials --------------------------------------------------------------------------------
SECRET_WORDS = (r"(?:passwords?|passwd|passphrases?|api[ _-]?keys?|secret[ _-]?keys?|access[ _-]?keys?|private[ _-]?keys?|"
                r"ssh keys?|tokens?|credentials?|secrets?|\.env|env(?:ironment)? vars?|environment variables?|id_rsa|"
                r"aws_secret_access_key|connection strings?|database password|admin password|root password|pin codes?|"
                r"session cookies?|signing keys?|master keys?|keystore)")
REVEAL = (r"(?:reveal|print|show|tell|give|list|dump|output|display|share|leak|read|cat|echo|send|paste|expose|disclose|"
          r"repeat|recite|what (?:is|are)|what's)")
SECRET_REQUEST = [
    rf"\b{REVEAL}\b[\w\s,'-]{{0,40}}\b(?:the|your|his|her|their|its|our|admin|root|system|server|company|stored|saved|hidden|internal|"
    rf"production|prod|other users?'?s?|user'?s?|customer'?s?|[\w]+'s)\s+(?:\w+\s+){{0,2}}?{SECRET_WORDS}",
    r"\b(?:contents? of|cat|read|open|print|show)\b[\w\s,'-]{0,20}(?:~?/?\.ssh/id_\w+|\.env\b|/etc/shadow|/etc/passwd|\.aws/credentials|"
    r"\.netrc|\.git-credentials|\.npmrc|\.pypirc|secrets?\.(?:json|ya?ml|toml))",
]

# ---- refusals (for deciding whether a model answered) ---------------------------------------------------------
REFUSAL = [
    r"\b(?:i|we) (?:can(?:no|')t|cannot|won't|will not|am not able to|am unable to|'m unable to|'m not able to|must decline to|"
    r"do not|don't) (?:help|assist|provide|comply|do that|answer|share|give|support|create|write)",
    r"\b(?:i'm|i am) sorry,? but\b",
    r"\bi (?:must|have to) (?:decline|refuse)\b",
    r"\b(?:this|that) request (?:violates|goes against|is against)\b",
    r"\bas an ai\b[\w\s,'-]{0,30}\b(?:cannot|can't|won't|not able)\b",
]


def compile_all(patterns: list[str]) -> list[re.Pattern]:
    return [re.compile(p, re.I | re.M) for p in patterns]
